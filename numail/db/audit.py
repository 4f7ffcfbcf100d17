"""The audit trail's SQL: chained appends, signed digests, verification and export.

The hash is computed here in Python rather than in a plpgsql function. verify() has to
recompute it from stored rows anyway, so a single implementation of the encoding
(numail.db.chain) serves both the writer and the verifier and the two can't drift apart; a
plpgsql hash would have to hash jsonb's text form, a PostgreSQL detail that an independent
verifier would then have to reproduce. What the database can check without the encoding it
does check, in the statement trigger of migration 0003: each new row follows the head (seq + 1,
prev_hash = head hash) with a ts from inside its transaction, so no client can fork a chain.

Appends to one workspace are serialised by pg_advisory_xact_lock on a key derived from the
workspace id, taken inside the workspace's transaction, and released by its commit; the head is
read after the lock, in a new statement, so under READ COMMITTED it is the committed head. A
lock row in audit_heads taken FOR UPDATE would need UPDATE on audit_heads, which the
application roles deliberately lack (only the trigger moves heads). A key collision between
two workspaces only makes them wait for each other.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from numail.db.chain import (
    GENESIS_HASH,
    Event,
    canonical_json,
    digest_payload,
    format_ts,
    key_id,
    row_hash,
)
from numail.db.session import workspace_session

log = logging.getLogger(__name__)

# Rows per INSERT statement and transaction: large enough to amortise the round trips, small
# enough that one transaction holds a workspace's lock only briefly.
CHUNK_ROWS = 1000
# Rows fetched per round trip by verify's server-side cursor.
FETCH_ROWS = 10_000

_INSERT = """
INSERT INTO audit_events
    (workspace_id, seq, event_id, ts, actor, action, source, target, details, prev_hash, hash)
SELECT %(workspace_id)s, u.seq, u.event_id, %(ts)s, u.actor, u.action::audit_action, u.source,
       u.target, u.details::jsonb, u.prev_hash, u.hash
  FROM unnest(%(seq)s::bigint[], %(event_id)s::uuid[], %(actor)s::text[], %(action)s::text[],
              %(source)s::text[], %(target)s::text[], %(details)s::text[],
              %(prev_hash)s::text[], %(hash)s::text[])
       AS u(seq, event_id, actor, action, source, target, details, prev_hash, hash)
"""


def _lock_workspace(conn: psycopg.Connection[Any], workspace_id: UUID) -> None:
    digest = hashlib.sha256(b"numail.audit:" + workspace_id.bytes).digest()
    # Also asks for generic plans for the rest of the transaction: by default the head query,
    # with its array parameter under row-level security, is planned afresh on every append,
    # which costs more than running it (bench/audit.py shows the difference).
    conn.execute(
        "SELECT pg_advisory_xact_lock(%s), "
        "set_config('plan_cache_mode', 'force_generic_plan', true)",
        [int.from_bytes(digest[:8], signed=True)],
    )


def _head(
    conn: psycopg.Connection[Any], workspace_id: UUID, event_ids: list[UUID]
) -> tuple[tuple[int, str, datetime], set[UUID]]:
    """The head (seq, hash, server time for new rows) and which of `event_ids` it already holds.

    A new chain's head is (0, genesis). One round trip, made after taking the lock.
    """
    row = conn.execute(
        "SELECT clock_timestamp(), h.seq, h.hash, ARRAY(SELECT e.event_id FROM audit_events e "
        "  WHERE e.workspace_id = %(ws)s AND e.event_id = ANY(%(ids)s)) "
        "FROM (VALUES (1)) AS one (x) LEFT JOIN audit_heads h ON h.workspace_id = %(ws)s",
        {"ws": workspace_id, "ids": event_ids},
    ).fetchone()
    assert row is not None
    now, seq, hash, recorded = row
    head = (0, GENESIS_HASH, now) if seq is None else (int(seq), str(hash), now)
    return head, set(recorded)


def _append_locked(
    conn: psycopg.Connection[Any],
    workspace_id: UUID,
    head: tuple[int, str, datetime],
    events: Sequence[Event],
) -> None:
    """Chains `events` onto `head`; the caller holds the workspace's session and lock, and read
    `head` after taking the lock."""
    if not events:
        return
    seq, prev, now = head
    ws, ts = str(workspace_id), format_ts(now)
    columns: dict[str, list[Any]] = defaultdict(list)
    for event in events:
        seq += 1
        event_id = str(event.event_id)
        digest = row_hash(
            workspace_id=ws,
            seq=seq,
            event_id=event_id,
            ts=ts,
            actor=event.actor,
            action=event.action,
            source=event.source,
            target=event.target,
            details=event.details,
            prev_hash=prev,
        )
        for name, value in (
            ("seq", seq),
            ("event_id", event_id),
            ("actor", event.actor),
            ("action", event.action),
            ("source", event.source),
            ("target", event.target),
            ("details", canonical_json(event.details)),
            ("prev_hash", prev),
            ("hash", digest),
        ):
            columns[name].append(value)
        prev = digest
    conn.execute(_INSERT, {"workspace_id": workspace_id, "ts": now, **columns})


def record_many(conn: psycopg.Connection[Any], events: Sequence[Event]) -> int:
    """Appends events in order and returns how many were new.

    Each workspace's consecutive events go in chunks of CHUNK_ROWS, one transaction per chunk,
    so a failure leaves the earlier chunks committed. An event whose event_id is already in its
    chain is skipped: replaying the same events after an unknown outcome appends nothing twice.
    `conn` must be idle.
    """
    appended = 0
    start = 0
    while start < len(events):
        workspace_id = events[start].workspace_id
        end = start + 1
        while (
            end < len(events)
            and end - start < CHUNK_ROWS
            and events[end].workspace_id == workspace_id
        ):
            end += 1
        chunk = events[start:end]
        with workspace_session(conn, workspace_id):
            _lock_workspace(conn, workspace_id)
            head, recorded = _head(conn, workspace_id, [e.event_id for e in chunk])
            new = [e for e in chunk if e.event_id not in recorded]
            _append_locked(conn, workspace_id, head, new)
        appended += len(new)
        start = end
    return appended


def _chains(conn: psycopg.Connection[Any]) -> list[UUID]:
    """Every workspace with a chain or a registry row that this connection can see.

    A superuser sees everything. The operator role sees every registered workspace (through the
    registry policy on workspaces) and, within each workspace's session, its chain.
    """
    with conn.transaction():
        rows = conn.execute(
            "SELECT workspace_id FROM audit_heads UNION SELECT workspace_id FROM audit_digests "
            "UNION SELECT workspace_id FROM audit_events UNION SELECT id FROM workspaces "
            "ORDER BY 1"
        ).fetchall()
    return [UUID(str(r[0])) for r in rows]


@dataclass(frozen=True)
class Digest:
    id: int
    workspace_id: UUID
    seq: int
    hash: str
    signed_at: datetime
    key_id: str
    signature: str

    def payload(self) -> bytes:
        return digest_payload(
            workspace_id=str(self.workspace_id),
            seq=self.seq,
            hash=self.hash,
            signed_at=format_ts(self.signed_at),
            key_id=self.key_id,
        )


def sign_digest(
    conn: psycopg.Connection[Any],
    signing_key: Ed25519PrivateKey,
    *,
    actor: str = "numail-operator",
) -> list[Digest]:
    """Signs the head of every chain that moved since its last digest; returns the new digests.

    Each digest is followed in its chain by a digest.signed event naming it, so the chain
    records when it was signed and verify() notices a digest row that was removed. A chain
    whose only change since its last digest is that event is skipped, so idle workspaces don't
    grow a row per signing.
    """
    kid = key_id(signing_key.public_key())
    signed: list[Digest] = []
    for workspace_id in _chains(conn):
        try:
            digest = _sign_head(conn, workspace_id, signing_key, kid, actor)
        except psycopg.IntegrityError as err:
            # Only a chain changed behind the trigger's back gets here; the others still
            # deserve their digest.
            log.error(
                "audit chain of workspace %s not signed (%s); run numail audit verify",
                workspace_id,
                err,
            )
            continue
        if digest is not None:
            signed.append(digest)
    return signed


def _sign_head(
    conn: psycopg.Connection[Any],
    workspace_id: UUID,
    signing_key: Ed25519PrivateKey,
    kid: str,
    actor: str,
) -> Digest | None:
    with workspace_session(conn, workspace_id):
        _lock_workspace(conn, workspace_id)
        head = conn.execute(
            "SELECT h.seq, h.hash, e.action::text, clock_timestamp(), "
            "(SELECT d.seq FROM audit_digests d WHERE d.workspace_id = h.workspace_id "
            " ORDER BY d.id DESC LIMIT 1) "
            "FROM audit_heads h JOIN audit_events e "
            "ON e.workspace_id = h.workspace_id AND e.seq = h.seq "
            "WHERE h.workspace_id = %s",
            [workspace_id],
        ).fetchone()
        if head is None:
            return None
        seq, hash, action, now, last_signed = head
        if last_signed is not None and (
            seq == last_signed or (seq == last_signed + 1 and action == "digest.signed")
        ):
            return None
        unsigned = Digest(0, workspace_id, int(seq), str(hash), now, kid, "")
        signature = signing_key.sign(unsigned.payload()).hex()
        inserted = conn.execute(
            "INSERT INTO audit_digests "
            "(workspace_id, seq, hash, signed_at, key_id, signature) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            [workspace_id, seq, hash, now, kid, signature],
        ).fetchone()
        assert inserted is not None
        digest = Digest(int(inserted[0]), workspace_id, int(seq), str(hash), now, kid, signature)
        event = Event.create(
            workspace_id=workspace_id,
            actor=actor,
            action="digest.signed",
            source="numail.audit.sign_digest",
            target=f"audit_digests/{digest.id}",
            details={"digest_id": digest.id, "seq": digest.seq, "key_id": kid},
        )
        _append_locked(conn, workspace_id, (int(seq), str(hash), now), [event])
    return digest


ProblemKind = Literal["altered", "removed", "inserted", "signature"]


@dataclass(frozen=True)
class Problem:
    """The first sign of tampering in one chain, or one bad digest signature."""

    kind: ProblemKind
    workspace_id: UUID
    seq: int | None
    message: str
    row_id: int | None = None
    digest_id: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}: workspace {self.workspace_id}: {self.message}"


@dataclass
class VerifyReport:
    workspaces: int = 0
    rows: int = 0
    digests: int = 0
    signatures_checked: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _row_name(row_id: int | None, seq: int) -> str:
    return f"row id {row_id} seq {seq}" if row_id is not None else f"seq {seq}"


def _check_signatures(
    digests: list[Digest], keys: dict[str, Ed25519PublicKey] | None
) -> Problem | None:
    if keys is None:
        return None
    for d in digests:
        key = keys.get(d.key_id)
        if key is None:
            return Problem(
                "signature",
                d.workspace_id,
                d.seq,
                f"digest {d.id} (seq {d.seq}) was signed by key {d.key_id}, which is not one of "
                "the public keys given",
                digest_id=d.id,
            )
        try:
            key.verify(bytes.fromhex(d.signature), d.payload())
        except (InvalidSignature, ValueError):
            return Problem(
                "signature",
                d.workspace_id,
                d.seq,
                f"digest {d.id} (seq {d.seq}): the signature does not match its contents; "
                "the digest was altered or forged",
                digest_id=d.id,
            )
    return None


def _verify_chain(
    conn: psycopg.Connection[Any],
    workspace_id: UUID,
    keys: dict[str, Ed25519PublicKey] | None,
    report: VerifyReport,
) -> None:
    ws = str(workspace_id)
    with workspace_session(conn, workspace_id):
        digests = [
            Digest(int(r[0]), workspace_id, int(r[1]), r[2], r[3], r[4], r[5])
            for r in conn.execute(
                "SELECT id, seq, hash, signed_at, key_id, signature FROM audit_digests "
                "WHERE workspace_id = %s ORDER BY id",
                [workspace_id],
            )
        ]
        head = conn.execute(
            "SELECT seq, hash FROM audit_heads WHERE workspace_id = %s", [workspace_id]
        ).fetchone()
        report.digests += len(digests)
        bad_signature = _check_signatures(digests, keys)
        if bad_signature is not None:
            report.problems.append(bad_signature)
        signed_at_seq: dict[int, list[Digest]] = defaultdict(list)
        for d in digests:
            signed_at_seq[d.seq].append(d)
        digest_seqs = {d.id: d.seq for d in digests}

        problem: Problem | None = None
        expected, prev_hash, prev_id = 1, GENESIS_HASH, None
        past_head_id: int | None = None
        with conn.cursor(name="numail_audit_verify") as cur:
            cur.itersize = FETCH_ROWS
            cur.execute(
                "SELECT id, seq, event_id, ts, actor, action::text, source, target, details, "
                "prev_hash, hash FROM audit_events WHERE workspace_id = %s ORDER BY seq, id",
                [workspace_id],
            )
            for (
                row_id,
                seq,
                event_id,
                ts,
                actor,
                action,
                source,
                target,
                details,
                prev,
                hash,
            ) in cur:
                report.rows += 1
                here = _row_name(row_id, seq)
                if seq < expected:
                    problem = Problem(
                        "inserted",
                        workspace_id,
                        seq,
                        f"{here} duplicates the seq of row id {prev_id}: one was inserted",
                        row_id,
                    )
                elif seq > expected:
                    missing = (
                        f"seq {expected}" if seq == expected + 1 else f"seq {expected}-{seq - 1}"
                    )
                    after = (
                        f"row id {prev_id} seq {expected - 1}"
                        if prev_id is not None
                        else "the start"
                    )
                    problem = Problem(
                        "removed",
                        workspace_id,
                        expected,
                        f"{missing} removed: the chain jumps from {after} to {here}",
                        row_id,
                    )
                elif prev != prev_hash:
                    before = (
                        f"row id {prev_id} seq {seq - 1}"
                        if prev_id is not None
                        else "the genesis hash"
                    )
                    problem = Problem(
                        "inserted",
                        workspace_id,
                        seq,
                        f"{here}: its prev_hash does not match {before}: it was inserted or forged",
                        row_id,
                    )
                else:
                    recomputed = row_hash(
                        workspace_id=ws,
                        seq=seq,
                        event_id=str(event_id),
                        ts=format_ts(ts),
                        actor=actor,
                        action=action,
                        source=source,
                        target=target,
                        details=details,
                        prev_hash=prev,
                    )
                    if recomputed != hash:
                        problem = Problem(
                            "altered",
                            workspace_id,
                            seq,
                            f"{here}: its contents no longer match its hash (stored {hash}, "
                            f"recomputed {recomputed}): the row was altered",
                            row_id,
                        )
                    else:
                        problem = _check_digests_at(
                            workspace_id, row_id, seq, hash, signed_at_seq.get(seq, [])
                        ) or _check_digest_reference(
                            workspace_id, row_id, seq, action, details, digest_seqs
                        )
                if problem is not None:
                    break
                if head is not None and seq == head[0] + 1:
                    past_head_id = row_id
                expected, prev_hash, prev_id = seq + 1, hash, row_id
        if problem is None:
            problem = _check_tail(
                workspace_id, expected - 1, prev_id, prev_hash, head, digests, past_head_id
            )
        if problem is not None:
            report.problems.append(problem)


def _check_digests_at(
    workspace_id: UUID, row_id: int, seq: int, hash: str, digests: list[Digest]
) -> Problem | None:
    for d in digests:
        if d.hash != hash:
            return Problem(
                "altered",
                workspace_id,
                seq,
                f"{_row_name(row_id, seq)} has hash {hash}, but digest {d.id} signed {d.hash} "
                "for this seq: the chain was rewritten at or before this row",
                row_id,
                d.id,
            )
    return None


def _check_digest_reference(
    workspace_id: UUID,
    row_id: int,
    seq: int,
    action: str,
    details: dict[str, Any],
    digest_seqs: dict[int, int],
) -> Problem | None:
    if action != "digest.signed":
        return None
    digest_id = details.get("digest_id")
    if isinstance(digest_id, int) and digest_seqs.get(digest_id) == details.get("seq"):
        return None
    return Problem(
        "removed",
        workspace_id,
        seq,
        f"{_row_name(row_id, seq)} records digest {digest_id}, which is missing from "
        "audit_digests or names another seq",
        row_id,
        digest_id if isinstance(digest_id, int) else None,
    )


def _check_tail(
    workspace_id: UUID,
    last_seq: int,
    last_id: int | None,
    last_hash: str,
    head: tuple[Any, ...] | None,
    digests: list[Digest],
    past_head_id: int | None,
) -> Problem | None:
    """Rows missing from, or added to, the end of the chain: head and digests say where it ended."""
    ends = (
        f"the chain ends at {_row_name(last_id, last_seq)}"
        if last_id is not None
        else "the chain is empty"
    )
    found: list[Problem] = []
    beyond = [d for d in digests if d.seq > last_seq]
    if beyond:
        d = min(beyond, key=lambda d: d.seq)
        found.append(
            Problem(
                "removed",
                workspace_id,
                last_seq + 1,
                f"seq {last_seq + 1}-{d.seq} removed: digest {d.id} signed seq {d.seq}, but {ends}",
                digest_id=d.id,
            )
        )
    if head is None:
        if last_id is not None:
            found.append(
                Problem(
                    "inserted",
                    workspace_id,
                    1,
                    f"{ends}, but no head was ever recorded: its rows bypassed the append trigger",
                )
            )
    else:
        head_seq, head_hash = int(head[0]), str(head[1])
        if head_seq > last_seq:
            found.append(
                Problem(
                    "removed",
                    workspace_id,
                    last_seq + 1,
                    f"seq {last_seq + 1}-{head_seq} removed: the head records seq {head_seq}, "
                    f"but {ends}",
                )
            )
        elif head_seq < last_seq:
            found.append(
                Problem(
                    "inserted",
                    workspace_id,
                    head_seq + 1,
                    f"{_row_name(past_head_id, head_seq + 1)} is past the recorded head (seq "
                    f"{head_seq}): rows were added bypassing the append trigger",
                    past_head_id,
                )
            )
        elif head_hash != last_hash:
            found.append(
                Problem(
                    "altered",
                    workspace_id,
                    last_seq,
                    f"{_row_name(last_id, last_seq)} has hash {last_hash}, but the head records "
                    f"{head_hash}",
                    last_id,
                )
            )
    return min(found, key=lambda p: p.seq or 0) if found else None


def verify(
    conn: psycopg.Connection[Any],
    workspace: UUID | str | None = None,
    public_key: Ed25519PublicKey | Sequence[Ed25519PublicKey] | None = None,
) -> VerifyReport:
    """Recomputes every chain (or one) and checks the digests; reports the first bad row of each.

    Rows stream through a server-side cursor, so memory doesn't grow with the chain. Without
    `public_key` the digests' heads are still compared with the rows, but their signatures are
    not checked (report.signatures_checked is False). Give several keys to cover rotations.
    `conn` must be idle.
    """
    keys: dict[str, Ed25519PublicKey] | None = None
    if public_key is not None:
        given = [public_key] if isinstance(public_key, Ed25519PublicKey) else list(public_key)
        keys = {key_id(k): k for k in given}
    report = VerifyReport(signatures_checked=keys is not None)
    chains = [UUID(str(workspace))] if workspace is not None else _chains(conn)
    for workspace_id in chains:
        report.workspaces += 1
        _verify_chain(conn, workspace_id, keys, report)
    return report


@dataclass(frozen=True)
class ExportedEvent:
    """An audit row as exported: everything verify() hashes, plus id and hash."""

    id: int
    workspace_id: UUID
    seq: int
    event_id: UUID
    ts: datetime
    actor: str
    action: str
    source: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """The row as JSON; without "id" and "hash" and with "v": 1 it is what the hash covers."""
        return {
            "id": self.id,
            "workspace_id": str(self.workspace_id),
            "seq": self.seq,
            "event_id": str(self.event_id),
            "ts": format_ts(self.ts),
            "actor": self.actor,
            "action": self.action,
            "source": self.source,
            "target": self.target,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


_EXPORT = """
SELECT id, workspace_id, seq, event_id, ts, actor, action::text, source, target, details,
       prev_hash, hash
  FROM audit_events
 WHERE (workspace_id = %(ws)s
        OR (%(children)s AND workspace_id IN (SELECT wp.workspace_id FROM workspace_parents wp
                                              WHERE wp.parent_id = %(ws)s)))
   AND (%(since)s::timestamptz IS NULL OR ts >= %(since)s::timestamptz)
 ORDER BY workspace_id <> %(ws)s, workspace_id, seq
"""


def export_events(
    conn: psycopg.Connection[Any],
    workspace: UUID | str,
    *,
    since: datetime | None = None,
    include_children: bool = False,
) -> Iterator[ExportedEvent]:
    """Streams a workspace's rows in chain order; with include_children, then each child's.

    Children are those whose workspace_parents row grants this workspace access; row-level
    security enforces the same rule, and the explicit filter keeps a superuser's export to it
    too. `conn` must be idle and is held until the iterator is exhausted or closed.
    """
    workspace_id = UUID(str(workspace))
    with workspace_session(conn, workspace_id), conn.cursor(name="numail_audit_export") as cur:
        cur.itersize = FETCH_ROWS
        cur.execute(_EXPORT, {"ws": workspace_id, "since": since, "children": include_children})
        for row in cur:
            yield ExportedEvent(*row)
