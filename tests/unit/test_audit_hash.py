"""The audit encoding without a database: row hashes, digests, validation, identifiers, spool."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from numail import audit
from numail.audit import GENESIS_HASH, AuditError, Event
from numail.db.chain import canonical_json, digest_payload, format_ts, key_id, row_hash

WORKSPACE = "7d1c9a1e-2f3b-4c5d-8e9f-0a1b2c3d4e5f"
FIELDS: dict[str, Any] = {
    "workspace_id": WORKSPACE,
    "seq": 1,
    "event_id": "00000000-0000-4000-8000-000000000001",
    "ts": "2025-01-31T12:00:00.000001Z",
    "actor": "system:serviceaccount:numail-system:numail-operator",
    "action": "mailbox.connected",
    "source": "numail-operator",
    "target": "mailbox/ws-acme/sales",
    "details": {"provider": "gmail", "n": 3, "ok": True, "none": None, "list": [1, "é"]},
    "prev_hash": GENESIS_HASH,
}
# docs/audit.md quotes this vector; an independent verifier must reproduce it.
GOLDEN_HASH = "9876d8fd179480318220c1a77a26b9cbb7db1a2ceb29697628407981a6e00365"

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(alphabet=st.characters(blacklist_characters="@\x00"))
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(blacklist_characters="@\x00"), max_size=8),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
details_objects = st.dictionaries(
    st.text(max_size=8).filter(lambda k: "@" not in k and "\x00" not in k), json_values, max_size=5
)


def test_the_row_hash_is_sha256_of_the_documented_canonical_json() -> None:
    canonical = (
        '{"action":"mailbox.connected","actor":"system:serviceaccount:numail-system:numail-operator",'
        '"details":{"list":[1,"\\u00e9"],"n":3,"none":null,"ok":true,"provider":"gmail"},'
        '"event_id":"00000000-0000-4000-8000-000000000001","prev_hash":"' + "0" * 64 + '",'
        '"seq":1,"source":"numail-operator","target":"mailbox/ws-acme/sales",'
        '"ts":"2025-01-31T12:00:00.000001Z","v":1,'
        '"workspace_id":"7d1c9a1e-2f3b-4c5d-8e9f-0a1b2c3d4e5f"}'
    )
    assert hashlib.sha256(canonical.encode("ascii")).hexdigest() == GOLDEN_HASH
    assert row_hash(**FIELDS) == GOLDEN_HASH


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("workspace_id", "7d1c9a1e-2f3b-4c5d-8e9f-0a1b2c3d4e50"),
        ("seq", 2),
        ("event_id", "00000000-0000-4000-8000-000000000002"),
        ("ts", "2025-01-31T12:00:00.000002Z"),
        ("actor", "someone-else"),
        ("action", "mailbox.disconnected"),
        ("source", "numail-worker"),
        ("target", "mailbox/ws-acme/other"),
        ("details", {**FIELDS["details"], "n": 4}),
        ("prev_hash", "1" * 64),
    ],
)
def test_every_field_is_covered_by_the_hash(field: str, value: Any) -> None:
    assert row_hash(**{**FIELDS, field: value}) != GOLDEN_HASH


@given(details_objects)
def test_the_hash_does_not_depend_on_key_order_and_survives_a_json_round_trip(
    details: dict[str, Any],
) -> None:
    reordered = dict(reversed(list(details.items())))
    round_tripped = json.loads(json.dumps(details))
    first = row_hash(**{**FIELDS, "details": details})
    assert row_hash(**{**FIELDS, "details": reordered}) == first
    assert row_hash(**{**FIELDS, "details": round_tripped}) == first


@given(details_objects)
def test_details_without_an_address_are_accepted_as_they_are(details: dict[str, Any]) -> None:
    event = Event.create(
        workspace_id=WORKSPACE,
        actor="a",
        action="key.created",
        source="s",
        target="t",
        details=details,
    )
    assert canonical_json(event.details) == canonical_json(details)


def create(**changes: Any) -> Event:
    fields: dict[str, Any] = {
        "workspace_id": WORKSPACE,
        "actor": "numail-operator",
        "action": "key.created",
        "source": "numail-operator",
        "target": "key/1",
        "details": {},
    }
    return Event.create(**{**fields, **changes})


@given(st.emails())
def test_an_email_address_anywhere_in_an_event_is_refused(email: str) -> None:
    for changes in (
        {"details": {"to": email}},
        {"details": {"nested": {"list": ["x", f"Name <{email}>"]}}},
        {"details": {email: 1}},
        {"target": f"lead:{email}"},
        {"actor": email},
        {"source": email},
    ):
        with pytest.raises(AuditError, match=r"email address.*hash_identifier"):
            create(**changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"action": "mailbox.exploded"}, "unknown audit action"),
        ({"workspace_id": "ws-acme"}, "not a UUID"),
        ({"details": {"ratio": 0.5}}, r"details\.ratio is a float"),
        ({"details": {"when": datetime.now(UTC)}}, r"details\.when is a datetime"),
        ({"details": {1: "x"}}, "non-string key"),
        ({"details": {"x": "a\x00b"}}, "NUL"),
        ({"target": ""}, "target must be a non-empty string"),
    ],
)
def test_events_the_encoding_cannot_carry_are_refused(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(AuditError, match=message):
        create(**changes)


def test_tuples_in_details_become_lists_so_the_stored_json_hashes_the_same() -> None:
    assert create(details={"pair": (1, 2)}).details == {"pair": [1, 2]}


def test_hash_identifier_is_keyed_normalised_and_carries_no_address() -> None:
    key = bytes(range(32))
    value = audit.hash_identifier(key, "Ada.Lovelace@Example.com")
    assert value == audit.hash_identifier(key, "  ada.lovelace@example.com ")
    assert value != audit.hash_identifier(bytes(32), "ada.lovelace@example.com")
    assert value != audit.hash_identifier(key, "ada.lovelace@example.org")
    assert len(value) == 64 and set(value) <= set("0123456789abcdef")
    create(details={"lead": value}, target=f"lead:{value}")  # accepted
    with pytest.raises(ValueError, match="at least 16 bytes"):
        audit.hash_identifier(b"short", "ada@example.com")


def test_timestamps_are_encoded_in_utc_with_six_fraction_digits() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert (
        format_ts(datetime(2025, 1, 31, 14, 0, 0, 5, tzinfo=plus_two))
        == "2025-01-31T12:00:00.000005Z"
    )
    assert format_ts(datetime(2025, 1, 31, 12, 0, tzinfo=UTC)) == "2025-01-31T12:00:00.000000Z"
    with pytest.raises(AuditError, match="timezone-aware"):
        format_ts(datetime(2025, 1, 31, 12, 0))


def test_a_digest_signature_covers_every_field_of_the_payload() -> None:
    key = Ed25519PrivateKey.generate()
    fields = {
        "workspace_id": WORKSPACE,
        "seq": 10,
        "hash": GOLDEN_HASH,
        "signed_at": "2025-01-31T12:00:00.000000Z",
        "key_id": key_id(key.public_key()),
    }
    signature = key.sign(digest_payload(**fields))
    key.public_key().verify(signature, digest_payload(**fields))
    for name, value in (
        ("seq", 9),
        ("hash", "0" * 64),
        ("signed_at", "2025-01-31T12:00:01.000000Z"),
    ):
        with pytest.raises(InvalidSignature):
            key.public_key().verify(signature, digest_payload(**{**fields, name: value}))


def test_signing_keys_load_from_pem_and_the_public_half_round_trips(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    private = tmp_path / "signing.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    loaded = audit.load_signing_key(private)
    public = tmp_path / "signing.pub"
    public.write_text(audit.public_key_pem(loaded))
    assert key_id(audit.load_public_key(public)) == key_id(key.public_key())

    wrong = tmp_path / "x25519.pem"
    wrong.write_bytes(
        X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(AuditError, match="signed with Ed25519"):
        audit.load_signing_key(wrong)


def test_spool_files_sort_in_record_order_even_when_the_clock_steps_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([5_000, 4_000, 3_000, 9_000, 1_000])
    monkeypatch.setattr("numail.audit.time.time_ns", lambda: next(clock))
    recorded = [create(target=f"key/{i}") for i in range(5)]
    for event in recorded:
        audit.spool_event(event, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n.split("-", 1)[0].lstrip("0") for n in names] == [
        "5000",
        "5001",
        "5002",
        "9000",
        "9001",
    ]
    spooled = [json.loads((tmp_path / n).read_text()) for n in names]
    assert [s["event_id"] for s in spooled] == [str(e.event_id) for e in recorded]
    assert not any(n.startswith(".") for n in names)
    assert (tmp_path / names[0]).stat().st_mode & 0o777 == 0o600
