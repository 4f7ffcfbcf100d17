"""The audit trail on a real PostgreSQL: chaining, append-only, tampering, concurrency, spool.

The schema is migrated by an ordinary (non-superuser) owner, as in production, so FORCE ROW
LEVEL SECURITY binds the owner and the head trigger. Tampering is done as the superuser with
triggers disabled, which is the one actor the database itself can't stop.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from numail import audit
from numail.audit import ACTIONS, GENESIS_HASH, AuditError, Event, record_many, sign_digest
from numail.audit_cli import main
from numail.db import migrate, workspace_session
from numail.db.chain import canonical_json, format_ts, row_hash
from tests.support.postgres import free_port

APP_ROLES = ("numail_operator", "numail_worker", "numail_readonly")
WORKSPACE_KEY = bytes(range(32))
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Trail:
    superuser: str  # DSN of the superuser
    users: dict[str, str]  # "owner" and each app role -> a LOGIN user

    def dsn(self, who: str) -> str:
        return self.superuser.replace("user=postgres", f"user={self.users[who]}")


@pytest.fixture(scope="module")
def trail(pg_dsn: str) -> Iterator[Trail]:
    users = {"owner": "audit_owner", **{r: f"audit_{r.removeprefix('numail_')}" for r in APP_ROLES}}
    dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'audit_owner'").fetchone():
            conn.execute("CREATE ROLE audit_owner LOGIN CREATEROLE")
        conn.execute(f'ALTER DATABASE "{dbname}" OWNER TO audit_owner'.encode())
    t = Trail(pg_dsn, users)
    with psycopg.connect(t.dsn("owner")) as conn:
        migrate(conn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for role in APP_ROLES:
            if not conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", [users[role]]
            ).fetchone():
                conn.execute(f'CREATE ROLE "{users[role]}" LOGIN IN ROLE {role}'.encode())
    yield t


def events(workspace: UUID, n: int, *, action: str = "key.created", tag: str = "e") -> list[Event]:
    return [
        Event.create(
            workspace_id=workspace,
            actor="system:serviceaccount:numail-system:numail-operator",
            action=action,
            source="numail-operator",
            target=f"{tag}/{i}",
            details={"i": i, "tag": tag, "nested": {"ok": True, "list": [1, "two", None]}},
        )
        for i in range(n)
    ]


def new_chain(trail: Trail, n: int, who: str = "numail_worker") -> UUID:
    workspace = uuid.uuid4()
    with psycopg.connect(trail.dsn(who)) as conn:
        assert record_many(conn, events(workspace, n)) == n
    return workspace


def rows(trail: Trail, workspace: UUID) -> list[dict[str, Any]]:
    with psycopg.connect(trail.superuser) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute(
            "SELECT id, seq, event_id, ts, actor, action::text AS action, source, target, "
            "details, prev_hash, hash FROM audit_events WHERE workspace_id = %s ORDER BY seq",
            [workspace],
        ).fetchall()


def tamper(trail: Trail, sql: str, params: list[Any]) -> None:
    """As the superuser with triggers off: the attacker the chain and the digests exist for."""
    with psycopg.connect(trail.superuser) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(sql.encode(), params)


def cli_verify(trail: Trail, workspace: UUID, *extra: str) -> list[str]:
    return ["audit", "verify", "--dsn", trail.superuser, "--workspace", str(workspace), *extra]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_action_enum_in_the_database_matches_the_code(trail: Trail) -> None:
    with psycopg.connect(trail.superuser) as conn:
        row = conn.execute("SELECT enum_range(NULL::audit_action)::text[]").fetchone()
    assert row is not None and tuple(row[0]) == ACTIONS


def test_appended_rows_form_a_hash_chain_from_the_genesis_hash(trail: Trail) -> None:
    workspace = new_chain(trail, 5)
    chain = rows(trail, workspace)
    assert [r["seq"] for r in chain] == [1, 2, 3, 4, 5]
    assert chain[0]["prev_hash"] == GENESIS_HASH
    for before, after in itertools.pairwise(chain):
        assert after["prev_hash"] == before["hash"]
        assert after["ts"] >= before["ts"]
    for r in chain:
        assert r["hash"] == row_hash(
            workspace_id=str(workspace),
            seq=r["seq"],
            event_id=str(r["event_id"]),
            ts=format_ts(r["ts"]),
            actor=r["actor"],
            action=r["action"],
            source=r["source"],
            target=r["target"],
            details=r["details"],
            prev_hash=r["prev_hash"],
        )
    with psycopg.connect(trail.superuser) as conn:
        head = conn.execute(
            "SELECT seq, hash FROM audit_heads WHERE workspace_id = %s", [workspace]
        ).fetchone()
    assert head == (5, chain[-1]["hash"])


def test_replaying_the_same_events_appends_nothing(trail: Trail) -> None:
    workspace = uuid.uuid4()
    batch = events(workspace, 3)
    with psycopg.connect(trail.dsn("numail_worker")) as conn:
        assert record_many(conn, batch) == 3
        assert record_many(conn, batch + events(workspace, 1, tag="new")) == 1
    assert len(rows(trail, workspace)) == 4


def raw_insert(
    conn: psycopg.Connection[Any], workspace: UUID, seq: int, prev: str, ts: str
) -> None:
    conn.execute(
        "INSERT INTO audit_events (workspace_id, seq, event_id, ts, actor, action, source, "
        "target, details, prev_hash, hash) VALUES (%s, %s, gen_random_uuid(), "
        f"{ts}, 'x', 'key.created', 'x', 'x', '{{}}', %s, %s)".encode(),
        [workspace, seq, prev, "f" * 64],
    )


@pytest.mark.parametrize(
    ("case", "seq", "prev", "ts", "error"),
    [
        ("an existing seq", 3, "head", "clock_timestamp()", psycopg.errors.UniqueViolation),
        ("a skipped seq", 5, "head", "clock_timestamp()", psycopg.IntegrityError),
        (
            "a prev_hash that is not the head's",
            4,
            "other",
            "clock_timestamp()",
            psycopg.IntegrityError,
        ),
        ("a backdated ts", 4, "head", "now() - interval '1 hour'", psycopg.IntegrityError),
    ],
)
def test_a_client_that_bypasses_record_many_cannot_fork_or_backdate_a_chain(
    trail: Trail, case: str, seq: int, prev: str, ts: str, error: type[Exception]
) -> None:
    workspace = new_chain(trail, 3)
    head = rows(trail, workspace)[-1]["hash"]
    with psycopg.connect(trail.dsn("numail_worker")) as conn:
        with pytest.raises(error), workspace_session(conn, workspace):
            raw_insert(conn, workspace, seq, head if prev == "head" else "a" * 64, ts)
        with workspace_session(conn, workspace):
            raw_insert(conn, workspace, 4, head, "clock_timestamp()")  # the correct next row
    assert [r["seq"] for r in rows(trail, workspace)] == [1, 2, 3, 4]


@pytest.mark.parametrize("who", [*APP_ROLES, "owner"])
@pytest.mark.parametrize("table", ["audit_events", "audit_digests"])
@pytest.mark.parametrize(
    "statement",
    ["UPDATE {t} SET workspace_id = workspace_id", "DELETE FROM {t}", "TRUNCATE {t}"],
)
def test_audit_rows_cannot_be_changed_by_any_application_role_or_the_owner(
    trail: Trail, who: str, table: str, statement: str
) -> None:
    workspace = new_chain(trail, 2)
    with psycopg.connect(trail.superuser) as conn:
        sign_digest(conn, Ed25519PrivateKey.generate())
    before = rows(trail, workspace)
    expected = (
        (psycopg.errors.RaiseException, "append-only")
        if who == "owner"
        else (psycopg.errors.InsufficientPrivilege, "permission denied")
    )
    with psycopg.connect(trail.dsn(who)) as conn:
        with workspace_session(conn, workspace):
            visible = conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
        assert visible is not None and visible[0] > 0, f"{who} sees no {table} rows to attack"
        with pytest.raises(expected[0], match=expected[1]), workspace_session(conn, workspace):
            conn.execute(statement.format(t=table).encode())
    assert rows(trail, workspace) == before


def test_eight_concurrent_writers_append_ten_thousand_events_without_a_fork(trail: Trail) -> None:
    workspace, writers, per_writer = uuid.uuid4(), 8, 1250
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []
    written: list[UUID] = []

    def write(index: int) -> None:
        rng = random.Random(index)
        try:
            with psycopg.connect(trail.dsn("numail_worker")) as conn:
                barrier.wait()
                left = per_writer
                while left:
                    batch = events(
                        workspace, min(left, rng.choice([1, 1, 3, 20, 100])), tag=f"w{index}"
                    )
                    record_many(conn, batch)
                    written.extend(e.event_id for e in batch)
                    left -= len(batch)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(trail.superuser) as conn:
        stats = conn.execute(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq), count(DISTINCT event_id) "
            "FROM audit_events WHERE workspace_id = %s",
            [workspace],
        ).fetchone()
        assert stats == (10_000, 10_000, 1, 10_000, 10_000)
        stored = {
            r[0]
            for r in conn.execute(
                "SELECT event_id FROM audit_events WHERE workspace_id = %s", [workspace]
            )
        }
        assert stored == set(written)
        conn.commit()
        report = audit.verify(conn, workspace)
    assert report.ok, report.problems
    assert report.rows == 10_000


def test_an_untouched_chain_verifies(trail: Trail, capsys: pytest.CaptureFixture[str]) -> None:
    workspace = new_chain(trail, 10)
    code, out = run_cli(cli_verify(trail, workspace), capsys)
    assert code == 0, out
    assert "audit trail intact: 1 workspace(s), 10 rows" in out


def test_a_row_whose_details_were_altered_is_named(
    trail: Trail, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = new_chain(trail, 10)
    victim = rows(trail, workspace)[3]
    tamper(
        trail,
        "UPDATE audit_events SET details = details || '{\"i\": 99}' WHERE id = %s",
        [victim["id"]],
    )
    code, out = run_cli(cli_verify(trail, workspace), capsys)
    assert code == 1
    assert f"altered: workspace {workspace}: row id {victim['id']} seq 4:" in out


def test_a_removed_row_is_named_by_its_seq(
    trail: Trail, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = new_chain(trail, 10)
    chain = rows(trail, workspace)
    with psycopg.connect(trail.superuser) as conn:
        conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete")
        conn.execute("DELETE FROM audit_events WHERE id = %s", [chain[4]["id"]])
        conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update_delete")
    code, out = run_cli(cli_verify(trail, workspace), capsys)
    assert code == 1
    assert (
        f"removed: workspace {workspace}: seq 5 removed: the chain jumps from row id "
        f"{chain[3]['id']} seq 4 to row id {chain[5]['id']} seq 6" in out
    )


def test_a_forged_row_is_named(trail: Trail, capsys: pytest.CaptureFixture[str]) -> None:
    """A row forked from seq 7, with a correct hash of its own, appended behind the trigger."""
    workspace = new_chain(trail, 10)
    chain = rows(trail, workspace)
    ts = datetime.now(UTC)
    forged = {
        "workspace_id": str(workspace),
        "seq": 11,
        "event_id": str(uuid.uuid4()),
        "ts": format_ts(ts),
        "actor": "someone",
        "action": "apikey.created",
        "source": "numail-operator",
        "target": "apikey/backdoor",
        "details": {},
        "prev_hash": chain[6]["hash"],
    }
    tamper(
        trail,
        "INSERT INTO audit_events (workspace_id, seq, event_id, ts, actor, action, source, "
        "target, details, prev_hash, hash) VALUES (%s, 11, %s, %s, 'someone', 'apikey.created', "
        "'numail-operator', 'apikey/backdoor', '{}', %s, %s)",
        [workspace, forged["event_id"], ts, chain[6]["hash"], row_hash(**forged)],  # type: ignore[arg-type]
    )
    forged_id = rows(trail, workspace)[-1]["id"]
    code, out = run_cli(cli_verify(trail, workspace), capsys)
    assert code == 1
    assert f"inserted: workspace {workspace}: row id {forged_id} seq 11: its prev_hash" in out


def test_rows_cut_from_the_end_are_caught_by_the_digest(
    trail: Trail, capsys: pytest.CaptureFixture[str]
) -> None:
    """The attacker also moves the head back, so only the signed digest still knows seq 10."""
    workspace = new_chain(trail, 10)
    with psycopg.connect(trail.superuser) as conn:
        digests = [
            d
            for d in sign_digest(conn, Ed25519PrivateKey.generate())
            if d.workspace_id == workspace
        ]
    chain = rows(trail, workspace)
    assert digests and digests[0].seq == 10 and chain[-1]["action"] == "digest.signed"
    tamper(trail, "DELETE FROM audit_events WHERE workspace_id = %s AND seq > 8", [workspace])
    tamper(
        trail,
        "UPDATE audit_heads SET seq = 8, hash = %s WHERE workspace_id = %s",
        [chain[7]["hash"], workspace],
    )
    code, out = run_cli(cli_verify(trail, workspace), capsys)
    assert code == 1
    assert (
        f"removed: workspace {workspace}: seq 9-10 removed: digest {digests[0].id} signed seq 10, "
        f"but the chain ends at row id {chain[7]['id']} seq 8" in out
    )


def rewrite_from(trail: Trail, workspace: UUID, seq: int) -> None:
    """Alters row `seq` and recomputes every later hash and the head: a consistent forgery."""
    chain = rows(trail, workspace)
    prev = chain[seq - 2]["hash"] if seq > 1 else GENESIS_HASH
    for r in chain[seq - 1 :]:
        details = {**r["details"], "rewritten": True} if r["seq"] == seq else r["details"]
        new_hash = row_hash(
            workspace_id=str(workspace),
            seq=r["seq"],
            event_id=str(r["event_id"]),
            ts=format_ts(r["ts"]),
            actor=r["actor"],
            action=r["action"],
            source=r["source"],
            target=r["target"],
            details=details,
            prev_hash=prev,
        )
        tamper(
            trail,
            "UPDATE audit_events SET details = %s, prev_hash = %s, hash = %s WHERE id = %s",
            [psycopg.types.json.Jsonb(details), prev, new_hash, r["id"]],
        )
        prev = new_hash
    tamper(trail, "UPDATE audit_heads SET hash = %s WHERE workspace_id = %s", [prev, workspace])


def test_a_consistently_rewritten_chain_passes_without_digests(
    trail: Trail, capsys: pytest.CaptureFixture[str]
) -> None:
    """The limit of a bare hash chain, stated as a test: docs/audit.md explains it."""
    workspace = new_chain(trail, 6)
    rewrite_from(trail, workspace, 2)
    assert rows(trail, workspace)[1]["details"]["rewritten"] is True
    code, out = run_cli(cli_verify(trail, workspace), capsys)
    assert code == 0, out


def test_a_consistently_rewritten_chain_is_caught_by_the_signed_digest(
    trail: Trail, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = new_chain(trail, 6)
    key = Ed25519PrivateKey.generate()
    with psycopg.connect(trail.superuser) as conn:
        digest = next(d for d in sign_digest(conn, key) if d.workspace_id == workspace)
    rewrite_from(trail, workspace, 2)
    code, out = run_cli(cli_verify(trail, workspace), capsys)
    assert code == 1
    sixth = rows(trail, workspace)[5]
    assert f"altered: workspace {workspace}: row id {sixth['id']} seq 6 has hash" in out
    assert f"but digest {digest.id} signed {digest.hash}" in out


def write_public_key(tmp_path: Path, key: Ed25519PrivateKey, name: str = "audit.pub") -> str:
    path = tmp_path / name
    path.write_text(audit.public_key_pem(key))
    return str(path)


def test_a_digest_whose_signature_was_altered_fails(
    trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = new_chain(trail, 4)
    key = Ed25519PrivateKey.generate()
    with psycopg.connect(trail.superuser) as conn:
        digest = next(d for d in sign_digest(conn, key) if d.workspace_id == workspace)
    public = write_public_key(tmp_path, key)
    code, out = run_cli(cli_verify(trail, workspace, "--public-key", public), capsys)
    assert code == 0 and "digest signatures valid" in out, out

    flipped = ("0" if digest.signature[0] != "0" else "1") + digest.signature[1:]
    tamper(trail, "UPDATE audit_digests SET signature = %s WHERE id = %s", [flipped, digest.id])
    code, out = run_cli(cli_verify(trail, workspace, "--public-key", public), capsys)
    assert code == 1
    assert f"signature: workspace {workspace}: digest {digest.id} (seq 4): the signature" in out


def test_a_digest_signed_by_an_unknown_key_fails(
    trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = new_chain(trail, 2)
    with psycopg.connect(trail.superuser) as conn:
        digest = next(
            d
            for d in sign_digest(conn, Ed25519PrivateKey.generate())
            if d.workspace_id == workspace
        )
    other = write_public_key(tmp_path, Ed25519PrivateKey.generate())
    code, out = run_cli(cli_verify(trail, workspace, "--public-key", other), capsys)
    assert code == 1
    assert f"digest {digest.id} (seq 2) was signed by key {digest.key_id}, which is not one" in out


def test_a_removed_digest_is_noticed_through_the_event_that_names_it(
    trail: Trail, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = new_chain(trail, 3)
    with psycopg.connect(trail.superuser) as conn:
        digest = next(
            d
            for d in sign_digest(conn, Ed25519PrivateKey.generate())
            if d.workspace_id == workspace
        )
    marker = rows(trail, workspace)[-1]
    assert marker["action"] == "digest.signed" and marker["details"]["digest_id"] == digest.id
    tamper(trail, "DELETE FROM audit_digests WHERE id = %s", [digest.id])
    code, out = run_cli(cli_verify(trail, workspace), capsys)
    assert code == 1
    assert (
        f"removed: workspace {workspace}: row id {marker['id']} seq 4 records digest {digest.id}"
        in out
    )


def test_signing_again_skips_chains_that_have_not_moved(trail: Trail) -> None:
    workspace = new_chain(trail, 2)
    key = Ed25519PrivateKey.generate()
    with (
        psycopg.connect(trail.dsn("numail_operator")) as operator,
        psycopg.connect(trail.superuser) as conn,
    ):
        # The operator finds chains through the registry, so register the workspace.
        conn.execute(
            "INSERT INTO workspaces (id, name) VALUES (%s, %s)", [workspace, f"w-{workspace}"]
        )
        conn.commit()
        first = [d for d in sign_digest(operator, key) if d.workspace_id == workspace]
        again = [d for d in sign_digest(operator, key) if d.workspace_id == workspace]
        record_many(conn, events(workspace, 1, tag="later"))
        third = [d for d in sign_digest(operator, key) if d.workspace_id == workspace]
        assert [d.seq for d in first] == [2]
        assert again == []
        assert [d.seq for d in third] == [4]
        report = audit.verify(operator, workspace, key.public_key())
    assert report.ok and report.digests == 2 and report.signatures_checked


def test_no_audit_row_for_a_mailbox_or_lead_holds_an_email_address(trail: Trail) -> None:
    workspace = uuid.uuid4()
    lead = audit.hash_identifier(WORKSPACE_KEY, "Ada.Lovelace@example.com")
    mailbox = audit.hash_identifier(WORKSPACE_KEY, "sales@agency.example")
    with psycopg.connect(trail.dsn("numail_operator")) as conn:
        record_many(
            conn,
            [
                Event.create(
                    workspace_id=workspace,
                    actor="system:serviceaccount:numail-system:numail-operator",
                    action="mailbox.connected",
                    source="numail-operator",
                    target="mailbox/ws-acme/sales",
                    details={"address": mailbox, "provider": "gmail"},
                ),
                Event.create(
                    workspace_id=workspace,
                    actor="system:serviceaccount:numail-system:numail-operator",
                    action="data.erased",
                    source="numail-operator",
                    target=f"lead:{lead}",
                    details={"request": "dsr/ws-acme/erase-1", "tables": ["leads", "replies"]},
                ),
            ],
        )
    with psycopg.connect(trail.superuser) as conn:
        texts = [
            r[0]
            for r in conn.execute(
                "SELECT t::text FROM audit_events t WHERE workspace_id = %s", [workspace]
            )
        ]
    assert len(texts) == 2
    for text in texts:
        assert "@" not in text, text
    assert lead in texts[1] and mailbox in texts[0]


def test_record_refuses_an_email_address_and_writes_nothing(trail: Trail, tmp_path: Path) -> None:
    workspace = uuid.uuid4()
    with pytest.raises(AuditError, match=r"details\.to contains an email address.*hash_identifier"):
        audit.record(
            actor="numail-operator",
            action="member.invited",
            workspace_id=workspace,
            target="member/ws-acme/bob",
            source="numail-operator",
            details={"to": "Bob <bob@example.com>"},
            dsn=trail.superuser,
            spool_dir=tmp_path,
        )
    assert rows(trail, workspace) == []
    assert list(tmp_path.iterdir()) == []


def unreachable_dsn() -> str:
    return f"host=127.0.0.1 port={free_port()} dbname=nowhere user=postgres"


def record_to(dsn: str, workspace: UUID, target: str, spool: Path) -> str:
    return audit.record(
        actor="numail-operator",
        action="key.rotated",
        workspace_id=workspace,
        target=target,
        source="numail-operator",
        details={"version": 2},
        dsn=dsn,
        spool_dir=spool,
    )


def test_events_recorded_while_the_database_is_down_are_spooled_then_flushed_in_order(
    trail: Trail, tmp_path: Path
) -> None:
    workspace, spool, down = uuid.uuid4(), tmp_path / "spool", unreachable_dsn()
    for i in range(5):
        assert record_to(down, workspace, f"key/{i}", spool) == "spooled"
    files = sorted(spool.iterdir())
    assert len(files) == 5
    assert [json.loads(f.read_text())["target"] for f in files] == [f"key/{i}" for i in range(5)]
    with psycopg.connect(trail.dsn("numail_operator")) as conn:
        assert audit.flush_spool(conn, spool) == 5
    assert list(spool.iterdir()) == []
    assert [r["target"] for r in rows(trail, workspace)] == [f"key/{i}" for i in range(5)]
    with psycopg.connect(trail.superuser) as conn:
        assert audit.verify(conn, workspace).ok


def test_the_next_record_replays_the_spool_before_its_own_event(
    trail: Trail, tmp_path: Path
) -> None:
    workspace, spool = uuid.uuid4(), tmp_path / "spool"
    assert record_to(unreachable_dsn(), workspace, "key/early-1", spool) == "spooled"
    assert record_to(unreachable_dsn(), workspace, "key/early-2", spool) == "spooled"
    assert record_to(trail.dsn("numail_operator"), workspace, "key/late", spool) == "written"
    assert [r["target"] for r in rows(trail, workspace)] == [
        "key/early-1",
        "key/early-2",
        "key/late",
    ]
    assert list(spool.iterdir()) == []


def test_a_spooled_event_committed_before_a_crash_is_not_appended_twice(
    trail: Trail, tmp_path: Path
) -> None:
    """The crash window: the replay committed, the process died before deleting the file."""
    workspace, spool = uuid.uuid4(), tmp_path / "spool"
    record_to(unreachable_dsn(), workspace, "key/once", spool)
    (path,) = spool.iterdir()
    spooled = json.loads(path.read_text())
    with psycopg.connect(trail.dsn("numail_operator")) as conn:
        replayed = Event.create(**{k: v for k, v in spooled.items() if k != "v"})
        assert record_many(conn, [replayed]) == 1
        assert audit.flush_spool(conn, spool) == 0
    assert list(spool.iterdir()) == []
    assert [r["target"] for r in rows(trail, workspace)] == ["key/once"]


def test_an_event_the_database_refuses_is_kept_in_the_spool(trail: Trail, tmp_path: Path) -> None:
    workspace, spool = uuid.uuid4(), tmp_path / "spool"
    # The readonly role connects fine but may not INSERT: not an outage, a misconfiguration.
    with pytest.raises(AuditError, match="is kept in"):
        record_to(trail.dsn("numail_readonly"), workspace, "key/kept", spool)
    assert len(list(spool.iterdir())) == 1
    assert record_to(trail.dsn("numail_worker"), workspace, "key/after", spool) == "written"
    assert [r["target"] for r in rows(trail, workspace)] == ["key/kept", "key/after"]


@pytest.fixture(scope="module")
def agency(trail: Trail) -> dict[str, UUID]:
    """agency (3 rows) with child (2 rows, grants read), hidden (no grant), rival agency."""
    ids = {name: uuid.uuid4() for name in ("agency", "child", "hidden", "rival")}
    parents = {"child": "agency", "hidden": "agency"}
    with psycopg.connect(trail.superuser) as conn:
        for name, ws in ids.items():
            parent = ids[parents[name]] if name in parents else None
            conn.execute(
                "INSERT INTO workspaces (id, name, parent_id) VALUES (%s, %s, %s)",
                [ws, f"exp-{name}-{ws.hex[:6]}", parent],
            )
        conn.execute(
            "INSERT INTO workspace_parents (workspace_id, parent_id, access) "
            "VALUES (%s, %s, 'read')",
            [ids["child"], ids["agency"]],
        )
        conn.commit()
        for name, n in (("agency", 3), ("child", 2), ("hidden", 1), ("rival", 1)):
            record_many(conn, events(ids[name], n, tag=name))
    return ids


def export_lines(
    trail: Trail, capsys: pytest.CaptureFixture[str], *args: str
) -> list[dict[str, Any]]:
    code = main(["audit", "export", "--dsn", trail.dsn("numail_readonly"), *args])
    out = capsys.readouterr().out
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


def test_export_prints_json_lines_whose_hashes_follow_the_documented_encoding(
    trail: Trail, agency: dict[str, UUID], capsys: pytest.CaptureFixture[str]
) -> None:
    lines = export_lines(trail, capsys, "--workspace", str(agency["agency"]))
    assert [(line["workspace_id"], line["seq"]) for line in lines] == [
        (str(agency["agency"]), s) for s in (1, 2, 3)
    ]
    for line in lines:
        body = {k: v for k, v in line.items() if k not in ("id", "hash")} | {"v": 1}
        assert hashlib.sha256(canonical_json(body).encode()).hexdigest() == line["hash"]


def test_an_agency_exports_its_childrens_trails_only_with_include_children(
    trail: Trail, agency: dict[str, UUID], capsys: pytest.CaptureFixture[str]
) -> None:
    own = export_lines(trail, capsys, "--workspace", str(agency["agency"]))
    both = export_lines(trail, capsys, "--workspace", str(agency["agency"]), "--include-children")
    assert {line["workspace_id"] for line in own} == {str(agency["agency"])}
    assert [line["workspace_id"] for line in both] == [str(agency["agency"])] * 3 + [
        str(agency["child"])
    ] * 2


def test_export_since_a_time_skips_older_rows(
    trail: Trail, agency: dict[str, UUID], capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(trail.superuser) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        cut = row[0] + timedelta(microseconds=1)
        conn.commit()
        record_many(conn, events(agency["rival"], 2, tag="after-cut"))
    lines = export_lines(
        trail, capsys, "--workspace", str(agency["rival"]), "--since", cut.isoformat()
    )
    assert [line["target"] for line in lines] == ["after-cut/0", "after-cut/1"]


def test_verify_takes_a_workspace_name_and_runs_as_the_operator_role(
    trail: Trail, agency: dict[str, UUID], capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(trail.superuser) as conn:
        row = conn.execute(
            "SELECT name FROM workspaces WHERE id = %s", [agency["child"]]
        ).fetchone()
    assert row is not None
    argv = ["audit", "verify", "--dsn", trail.dsn("numail_operator"), "--workspace", row[0]]
    code, out = run_cli(argv, capsys)
    assert code == 0, out
    assert "1 workspace(s), 2 rows" in out


def test_verify_without_a_database_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NUMAIL_DATABASE_URL", raising=False)
    code, out = run_cli(["audit", "verify"], capsys)
    assert code == 2
    assert "NUMAIL_DATABASE_URL" in out


def test_the_module_runs_as_a_command_and_exits_1_on_a_tampered_chain(trail: Trail) -> None:
    workspace = new_chain(trail, 3)
    victim = rows(trail, workspace)[1]
    tamper(trail, "UPDATE audit_events SET actor = 'nobody' WHERE id = %s", [victim["id"]])
    env = {**os.environ, "NUMAIL_DATABASE_URL": trail.superuser}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "numail.audit_cli",
            "audit",
            "verify",
            "--workspace",
            str(workspace),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert f"row id {victim['id']} seq 2" in done.stdout
