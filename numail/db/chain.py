"""The audit chain's canonical encoding: validated events, the hash of a row, the signed digest.

Row hash (encoding version 1). For the row of workspace W with sequence number S:

    hash = lowercase hex of SHA-256( canonical_json({
        "v": 1,
        "workspace_id": W,        # lowercase UUID with hyphens
        "seq": S,                 # integer, 1 for the first row of W
        "event_id": E,            # lowercase UUID with hyphens, chosen by the writer
        "ts": T,                  # UTC, "YYYY-MM-DDTHH:MM:SS.ffffffZ", always 6 fraction digits
        "actor": ..., "action": ..., "source": ..., "target": ...,   # strings
        "details": {...},         # JSON object: strings, integers, booleans, null, arrays, objects
        "prev_hash": P,           # hash of row S-1 of W; 64 "0" characters for S = 1
    }) )

canonical_json(x) is the UTF-8 (in fact ASCII) encoding of Python's
json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False):
object keys sorted by code point, no whitespace, non-ASCII characters escaped as \\uXXXX
(lowercase hex, surrogate pairs above U+FFFF), integers in decimal. Floats are refused when an
event is created, because their text would depend on the encoder; that keeps the encoding
reproducible in any language. The row's database id is not hashed: it only orders inserts,
and seq orders the chain.

Digest payload (version 1), signed with Ed25519:

    canonical_json({"v": 1, "type": "numail.audit.digest", "workspace_id": W, "seq": S,
                    "hash": H, "signed_at": T, "key_id": K})

where (S, H) is W's head when signed, T is formatted like ts, and K is key_id(public key): the
lowercase hex SHA-256 of the 32 raw bytes of the Ed25519 public key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ENCODING_VERSION = 1
GENESIS_HASH = "0" * 64
# Keep in step with the audit_action enum in migrations/0003_audit.sql.
ACTIONS: tuple[str, ...] = (
    "mailbox.connected",
    "mailbox.disconnected",
    "mailbox.verified",
    "member.invited",
    "member.role_changed",
    "member.removed",
    "apikey.created",
    "apikey.revoked",
    "data.exported",
    "data.erased",
    "key.rotated",
    "key.created",
    "workspace.created",
    "workspace.deleted",
    "digest.signed",
)

# Anything shaped like local@domain.tld. Deliberately loose: a false positive costs the caller a
# hash_identifier() call, a false negative puts personal data in a trail that is never erased.
EMAIL_ADDRESS = re.compile(r"[^\s@<>()\[\]\\,;:]+@[\w-]+(?:\.[\w-]+)+")


class AuditError(ValueError):
    """An audit event was refused; the message says which field and what to do instead."""


def canonical_json(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def format_ts(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise AuditError("audit timestamps must be timezone-aware")
    u = ts.astimezone(UTC)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T"
        f"{u.hour:02d}:{u.minute:02d}:{u.second:02d}.{u.microsecond:06d}Z"
    )


def _check_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise AuditError(f"{where} contains a NUL character, which PostgreSQL can't store")
    if EMAIL_ADDRESS.search(value):
        raise AuditError(
            f"{where} contains an email address; audit rows must hold no personal data: "
            "record numail.audit.hash_identifier(workspace_key, address) instead"
        )


def _plain_json(value: Any, where: str) -> Any:
    """A plain dict/list copy of `value`, refusing what the canonical encoding can't carry."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        _check_text(value, where)
        return value
    if isinstance(value, float):
        raise AuditError(f"{where} is a float; store it as an integer or a string")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditError(f"{where} has a non-string key {key!r}")
            _check_text(key, f"{where} key {key!r}")
            out[key] = _plain_json(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_plain_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise AuditError(
        f"{where} is a {type(value).__name__}; details hold only strings, integers, booleans, "
        "null, lists and objects"
    )


@dataclass(frozen=True)
class Event:
    """One thing to record, validated: known action, no email address, encodable details."""

    workspace_id: UUID
    actor: str
    action: str
    source: str
    target: str
    details: dict[str, Any]
    event_id: UUID

    @classmethod
    def create(
        cls,
        *,
        workspace_id: UUID | str,
        actor: str,
        action: str,
        source: str,
        target: str,
        details: Mapping[str, Any] | None = None,
        event_id: UUID | str | None = None,
    ) -> Event:
        try:
            workspace = UUID(str(workspace_id))
        except ValueError:
            raise AuditError(
                f"workspace_id {workspace_id!r} is not a UUID; pass the Workspace's metadata.uid"
            ) from None
        if action not in ACTIONS:
            raise AuditError(f"unknown audit action {action!r}; use one of {', '.join(ACTIONS)}")
        for name, text in (("actor", actor), ("source", source), ("target", target)):
            if not isinstance(text, str) or not text:
                raise AuditError(f"{name} must be a non-empty string")
            _check_text(text, name)
        plain = _plain_json(dict(details or {}), "details")
        return cls(
            workspace_id=workspace,
            actor=actor,
            action=action,
            source=source,
            target=target,
            details=plain,
            event_id=uuid4() if event_id is None else UUID(str(event_id)),
        )


def row_hash(
    *,
    workspace_id: str,
    seq: int,
    event_id: str,
    ts: str,
    actor: str,
    action: str,
    source: str,
    target: str,
    details: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """The row's hash; `ts` is already formatted by format_ts, UUIDs are lowercase strings."""
    body = {
        "v": ENCODING_VERSION,
        "workspace_id": workspace_id,
        "seq": seq,
        "event_id": event_id,
        "ts": ts,
        "actor": actor,
        "action": action,
        "source": source,
        "target": target,
        "details": details,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def digest_payload(*, workspace_id: str, seq: int, hash: str, signed_at: str, key_id: str) -> bytes:
    body = {
        "v": ENCODING_VERSION,
        "type": "numail.audit.digest",
        "workspace_id": workspace_id,
        "seq": seq,
        "hash": hash,
        "signed_at": signed_at,
        "key_id": key_id,
    }
    return canonical_json(body).encode("ascii")
