"""The send job engine's SQL: enqueue, claim, start attempts, record outcomes, heartbeats.

Every call is one workspace-scoped transaction (numail.db.workspace_session), so row-level
security holds the engine to one workspace whatever its callers pass. The state machine lives
in the functions of migrations 0004 and 0005; this module only shapes their arguments and
results, so the rules (leases, daily caps, suppression, unknown outcomes) are enforced in one
place, by the database, whichever process calls them. docs/send-engine.md describes the states.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import psycopg

from numail.db.session import workspace_session

JobState = Literal[
    "scheduled", "claimed", "sending", "sent", "failed", "suppressed", "cancelled", "unknown"
]
FINAL_STATES: frozenset[str] = frozenset({"sent", "failed", "suppressed", "cancelled"})
OutcomeKind = Literal["sent", "found", "unknown", "unsettled", "retry", "failed", "release"]
# Rows per INSERT when enqueueing: one statement per chunk keeps memory and lock time bounded.
ENQUEUE_CHUNK = 5000


class EnqueueError(ValueError):
    """A job can't be created as asked (say, its mailbox has no address to name Message-IDs)."""


def notify_channel(workspace_id: UUID | str) -> str:
    """The LISTEN channel the insert trigger of migration 0004 notifies for a workspace."""
    return "numail_send_" + UUID(str(workspace_id)).hex


@dataclass(frozen=True)
class NewJob:
    """One email to schedule. `idempotency_key` makes a repeated enqueue a no-op."""

    mailbox_id: UUID
    lead_id: UUID
    idempotency_key: str
    scheduled_at: datetime | None = None
    subject: str | None = None
    body: str | None = None
    sequence_id: UUID | None = None
    step: int | None = None


@dataclass(frozen=True)
class Enqueued:
    job_id: UUID
    idempotency_key: str
    message_id: str
    created: bool


def enqueue(
    conn: psycopg.Connection[Any], workspace_id: UUID | str, jobs: Sequence[NewJob]
) -> list[Enqueued]:
    """Create the jobs, each with its Message-ID `<uuid@sending domain>` fixed now.

    A job whose idempotency key already exists in the workspace is not created again; its
    existing id and Message-ID are returned with created=False, so a caller that retries after
    an unknown commit outcome learns what it made the first time.
    """
    results: list[Enqueued] = []
    for start in range(0, len(jobs), ENQUEUE_CHUNK):
        results.extend(_enqueue_chunk(conn, workspace_id, jobs[start : start + ENQUEUE_CHUNK]))
    return results


def _enqueue_chunk(
    conn: psycopg.Connection[Any], workspace_id: UUID | str, jobs: Sequence[NewJob]
) -> list[Enqueued]:
    with workspace_session(conn, workspace_id):
        mailbox_ids = sorted({j.mailbox_id for j in jobs})
        domains = {
            UUID(str(row[0])): row[1]
            for row in conn.execute(
                "SELECT id, split_part(address, '@', 2) FROM mailboxes WHERE id = ANY(%s)",
                [mailbox_ids],
            )
        }
        message_ids: list[str] = []
        for job in jobs:
            domain = domains.get(job.mailbox_id)
            if not domain:
                raise EnqueueError(
                    f"mailbox {job.mailbox_id} is not in this workspace or has no address; the "
                    "operator records it from the Mailbox's spec.address"
                )
            message_ids.append(f"<{uuid.uuid4()}@{domain}>")
        inserted = conn.execute(
            """
            INSERT INTO send_jobs (workspace_id, mailbox_id, lead_id, sequence_id, step,
                                   scheduled_at, due_at, idempotency_key, message_id, subject, body)
            SELECT %(ws)s, n.mailbox_id, n.lead_id, n.sequence_id, n.step,
                   coalesce(n.scheduled_at, now()), coalesce(n.scheduled_at, now()), n.key,
                   n.message_id, n.subject, n.body
              FROM unnest(%(mailbox)s::uuid[], %(lead)s::uuid[], %(sequence)s::uuid[],
                          %(step)s::integer[], %(at)s::timestamptz[], %(key)s::text[],
                          %(mid)s::text[], %(subject)s::text[], %(body)s::text[])
                   AS n (mailbox_id, lead_id, sequence_id, step, scheduled_at, key, message_id,
                         subject, body)
            ON CONFLICT (workspace_id, idempotency_key) DO NOTHING
            RETURNING id, idempotency_key, message_id
            """,
            {
                "ws": UUID(str(workspace_id)),
                "mailbox": [j.mailbox_id for j in jobs],
                "lead": [j.lead_id for j in jobs],
                "sequence": [j.sequence_id for j in jobs],
                "step": [j.step for j in jobs],
                "at": [j.scheduled_at for j in jobs],
                "key": [j.idempotency_key for j in jobs],
                "mid": message_ids,
                "subject": [j.subject for j in jobs],
                "body": [j.body for j in jobs],
            },
        ).fetchall()
        made = {str(key): (UUID(str(job_id)), str(mid)) for job_id, key, mid in inserted}
        missing = [j.idempotency_key for j in jobs if j.idempotency_key not in made]
        existing: dict[str, tuple[UUID, str]] = {}
        if missing:
            existing = {
                str(key): (UUID(str(job_id)), str(mid))
                for job_id, key, mid in conn.execute(
                    "SELECT id, idempotency_key, message_id FROM send_jobs "
                    "WHERE workspace_id = %s AND idempotency_key = ANY(%s)",
                    [UUID(str(workspace_id)), missing],
                )
            }
    out: list[Enqueued] = []
    seen: set[str] = set()
    for job in jobs:
        key = job.idempotency_key
        if key in made and key not in seen:
            job_id, mid = made[key]
            out.append(Enqueued(job_id, key, mid, True))
        else:
            job_id, mid = made.get(key) or existing[key]
            out.append(Enqueued(job_id, key, mid, False))
        seen.add(key)
    return out


@dataclass(frozen=True)
class ClaimedJob:
    """A job leased to this worker: `claimed` to send, `unknown` to settle, or `suppressed`."""

    job_id: UUID
    mailbox_id: UUID
    state: str
    message_id: str
    attempts: int
    recipient: str = field(repr=False)
    first_name: str | None = field(repr=False)
    last_name: str | None = field(repr=False)
    company: str | None = field(repr=False)
    subject: str = field(repr=False)
    body: str = field(repr=False)


def claim(
    conn: psycopg.Connection[Any],
    workspace_id: UUID | str,
    owner: str,
    limit: int,
    *,
    lease_seconds: float,
    settle_delay_seconds: float,
) -> list[ClaimedJob]:
    """Lease up to `limit` jobs to `owner`; see numail_claim_send_jobs in migration 0005."""
    with workspace_session(conn, workspace_id):
        rows = conn.execute(
            "SELECT * FROM numail_claim_send_jobs(%s, %s, %s, %s)",
            [owner, limit, float(lease_seconds), float(settle_delay_seconds)],
        ).fetchall()
    return [
        ClaimedJob(
            job_id=r[0],  # psycopg loads uuid columns as UUID
            mailbox_id=r[1],
            state=str(r[2]),
            message_id=str(r[3]),
            attempts=int(r[4]),
            recipient=str(r[5]),
            first_name=r[6],
            last_name=r[7],
            company=r[8],
            subject=str(r[9]),
            body=str(r[10]),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Started:
    """The jobs that entered `sending` (with their attempt number), and those suppressed."""

    attempts: dict[UUID, int]
    suppressed: list[UUID]


def start_attempts(
    conn: psycopg.Connection[Any],
    workspace_id: UUID | str,
    owner: str,
    job_ids: Iterable[UUID],
    *,
    lease_seconds: float,
) -> Started:
    """Move leased jobs to `sending` and renew the lease. Send only what comes back: nothing
    when the lease was already lost."""
    ids = list(job_ids)
    if not ids:
        return Started({}, [])
    with workspace_session(conn, workspace_id):
        rows = conn.execute(
            "SELECT * FROM numail_start_send_attempts(%s, %s::uuid[], %s)",
            [owner, ids, float(lease_seconds)],
        ).fetchall()
    attempts = {r[0]: int(r[1]) for r in rows if r[2] == "sending"}
    suppressed = [r[0] for r in rows if r[2] == "suppressed"]
    return Started(attempts, suppressed)


@dataclass(frozen=True)
class Outcome:
    """What became of one job; `detail` is stored, so it must hold nothing secret."""

    job_id: UUID
    kind: OutcomeKind
    delay_seconds: float = 0.0
    reply_code: int | None = None
    detail: str | None = None
    provider_message_id: str | None = None
    hard_bounce: bool = False


def finish(
    conn: psycopg.Connection[Any],
    workspace_id: UUID | str,
    owner: str,
    outcomes: Sequence[Outcome],
) -> dict[UUID, str]:
    """Record outcomes; returns those applied (a job whose lease was lost is left alone)."""
    if not outcomes:
        return {}
    with workspace_session(conn, workspace_id):
        rows = conn.execute(
            "SELECT * FROM numail_finish_send_jobs(%s, %s::uuid[], %s::text[], %s::float8[], "
            "%s::integer[], %s::text[], %s::text[], %s::boolean[])",
            [
                owner,
                [o.job_id for o in outcomes],
                [o.kind for o in outcomes],
                [float(o.delay_seconds) for o in outcomes],
                [o.reply_code for o in outcomes],
                [o.detail for o in outcomes],
                [o.provider_message_id for o in outcomes],
                [o.hard_bounce for o in outcomes],
            ],
        ).fetchall()
    return {r[0]: str(r[1]) for r in rows}


def heartbeat(
    conn: psycopg.Connection[Any],
    workspace_id: UUID | str,
    owner: str,
    held: Iterable[UUID],
    *,
    lease_seconds: float,
    settle_delay_seconds: float,
) -> int:
    """Renew `owner`'s lease, which covers every job it holds, and hand back the jobs its row
    lists that are not in `held` (see numail_send_heartbeat in migration 0005).

    Returns how many jobs `owner` still holds, or -1 when its lease was lost: another worker
    took its jobs back, and none of them may be handed over by `owner` any more.
    """
    with workspace_session(conn, workspace_id):
        row = conn.execute(
            "SELECT numail_send_heartbeat(%s, %s::uuid[], %s, %s)",
            [owner, list(held), float(lease_seconds), float(settle_delay_seconds)],
        ).fetchone()
    return -1 if row is None else int(row[0])


def worker_stopped(
    conn: psycopg.Connection[Any],
    workspace_id: UUID | str,
    owner: str,
    *,
    settle_delay_seconds: float,
) -> int:
    """End `owner`'s lease at a clean stop; jobs it still lists go back (sending -> unknown)."""
    with workspace_session(conn, workspace_id):
        row = conn.execute(
            "SELECT numail_send_worker_stopped(%s, %s)", [owner, float(settle_delay_seconds)]
        ).fetchone()
    return 0 if row is None else int(row[0])


def queue_depth(conn: psycopg.Connection[Any], workspace_id: UUID | str) -> dict[str, int]:
    """Jobs not yet final, by state (scheduled includes those not due yet).

    Waiting jobs are counted from send_queue and jobs in hand from the workers' rows, so this
    never scans send_jobs, which has no index on state (migration 0005 says why).
    """
    with workspace_session(conn, workspace_id):
        rows = conn.execute(
            """
            SELECT j.state, count(*)
              FROM (SELECT q.job_id AS id FROM send_queue q WHERE q.workspace_id = %(ws)s
                    UNION
                    SELECT x.id FROM send_workers w, unnest(w.jobs) AS x (id)
                     WHERE w.workspace_id = %(ws)s) k
              JOIN send_jobs j ON j.id = k.id
             WHERE j.state IN ('scheduled', 'claimed', 'sending', 'unknown')
             GROUP BY j.state
            """,
            {"ws": UUID(str(workspace_id))},
        ).fetchall()
    depth = dict.fromkeys(("scheduled", "claimed", "sending", "unknown"), 0)
    depth.update({str(s): int(n) for s, n in rows})
    return depth


def next_due(conn: psycopg.Connection[Any], workspace_id: UUID | str) -> datetime | None:
    """When the earliest waiting job becomes due, so an idle worker knows when to look."""
    with workspace_session(conn, workspace_id):
        row = conn.execute(
            "SELECT min(due_at) FROM send_queue WHERE workspace_id = %s",
            [UUID(str(workspace_id))],
        ).fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True)
class MailboxRow:
    """What the workers read about a mailbox: nothing in it is secret."""

    id: UUID
    namespace: str
    name: str
    provider: str
    address: str | None
    settings: dict[str, Any]
    daily_cap: int
    state: str


def mailboxes(
    conn: psycopg.Connection[Any], workspace_id: UUID | str, ids: Iterable[UUID]
) -> dict[UUID, MailboxRow]:
    with workspace_session(conn, workspace_id):
        rows = conn.execute(
            "SELECT id, namespace, name, provider, address, settings, daily_cap, state "
            "FROM mailboxes WHERE workspace_id = %s AND id = ANY(%s)",
            [UUID(str(workspace_id)), list(ids)],
        ).fetchall()
    found = [
        MailboxRow(UUID(str(r[0])), r[1], r[2], r[3], r[4], dict(r[5] or {}), int(r[6]), r[7])
        for r in rows
    ]
    return {m.id: m for m in found}
