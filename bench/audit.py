"""Audit trail figures: chained appends against plain inserts, and verify() over 1,000,000 rows.

Run: python bench/audit.py   (starts its own PostgreSQL; the ratios are measured side by side)

Both sides run as a member of numail_worker inside workspace_session(), insert the same
pre-built events with the same unnest() statement into a table of the same shape (LIKE
audit_events, with its indexes and row-level security), one transaction per batch. The chain
side adds what the chain costs: the advisory lock, reading the head, hashing, the duplicate
check and the statement trigger that checks linkage and moves the head.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from numail.audit import Event, record_many, verify
from numail.db import migrate, workspace_session
from numail.db.chain import GENESIS_HASH, canonical_json
from tests.support.postgres import PostgresServer, start_postgres

PLAIN_INSERT = """
INSERT INTO audit_plain
    (workspace_id, seq, event_id, ts, actor, action, source, target, details, prev_hash, hash)
SELECT %(workspace_id)s, u.seq, u.event_id, clock_timestamp(), u.actor, u.action::audit_action,
       u.source, u.target, u.details::jsonb, %(zero)s, %(zero)s
  FROM unnest(%(seq)s::bigint[], %(event_id)s::uuid[], %(actor)s::text[], %(action)s::text[],
              %(source)s::text[], %(target)s::text[], %(details)s::text[])
       AS u(seq, event_id, actor, action, source, target, details)
"""


def make_events(workspace: uuid.UUID, n: int) -> list[Event]:
    return [
        Event.create(
            workspace_id=workspace,
            actor="system:serviceaccount:numail-system:numail-send-worker",
            action="mailbox.verified",
            source="numail-worker",
            target=f"mailbox/ws-bench/m{i % 50}",
            details={"attempt": i, "provider": "gmail", "result": "ok"},
        )
        for i in range(n)
    ]


def plain_append(
    conn: psycopg.Connection[Any], workspace: uuid.UUID, batch: list[Event], start: int
) -> None:
    with workspace_session(conn, workspace):
        conn.execute(
            PLAIN_INSERT,
            {
                "workspace_id": workspace,
                "zero": GENESIS_HASH,
                "seq": list(range(start, start + len(batch))),
                "event_id": [e.event_id for e in batch],
                "actor": [e.actor for e in batch],
                "action": [e.action for e in batch],
                "source": [e.source for e in batch],
                "target": [e.target for e in batch],
                "details": [canonical_json(e.details) for e in batch],
            },
        )


def setup(server: PostgresServer) -> str:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench")
    with psycopg.connect(server.dsn("bench")) as conn:
        migrate(conn)
        with conn.transaction():
            conn.execute(
                "CREATE TABLE audit_plain (LIKE audit_events INCLUDING DEFAULTS "
                "INCLUDING CONSTRAINTS INCLUDING INDEXES INCLUDING IDENTITY)"
            )
            conn.execute("SELECT numail_protect_tenant_table('audit_plain')")
            conn.execute("GRANT SELECT, INSERT ON audit_plain TO numail_worker")
            conn.execute("CREATE ROLE bench_worker LOGIN IN ROLE numail_worker")
    return server.dsn("bench", "bench_worker")


def bench_appends(dsn: str, batch_size: int, rows: int, rounds: int) -> None:
    chained, plain = [], []
    with psycopg.connect(dsn) as conn:
        for _ in range(rounds):  # interleaved, so both see the same table sizes and load
            workspace = uuid.uuid4()
            events = make_events(workspace, rows)
            batches = [events[i : i + batch_size] for i in range(0, rows, batch_size)]
            t = time.perf_counter()
            for b in batches:
                record_many(conn, b)
            chained.append(time.perf_counter() - t)
            t = time.perf_counter()
            for i, b in enumerate(batches):
                plain_append(conn, workspace, b, 1 + i * batch_size)
            plain.append(time.perf_counter() - t)
    c, p = statistics.median(chained), statistics.median(plain)
    print(
        f"batches of {batch_size:>4}: chained {rows / c:>9,.0f} rows/s   "
        f"plain {rows / p:>9,.0f} rows/s"
    )
    print(f"                 ratio chained/plain: {p / c:.2f}x (goal >= 0.5x, >= 5,000 rows/s)")


def bench_verify(dsn: str, rows: int) -> None:
    workspace = uuid.uuid4()
    with psycopg.connect(dsn) as conn:
        t = time.perf_counter()
        for start in range(0, rows, 50_000):  # build events in slices to keep memory flat
            record_many(conn, make_events(workspace, min(50_000, rows - start)))
        filled = time.perf_counter() - t
        print(f"filled one chain with {rows:,} rows in {filled:.1f}s ({rows / filled:,.0f} rows/s)")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        report = verify(conn, workspace)
        took = time.perf_counter() - t
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert report.ok and report.rows == rows, report
    print(
        f"verify {rows:,} rows: {took:.1f}s ({rows / took:,.0f} rows/s; goal < 60 s); "
        f"peak RSS grew {(rss_after - rss_before) / 1024:.0f} MiB"
    )


def main() -> None:
    server = start_postgres()
    try:
        dsn = setup(server)
        bench_appends(dsn, batch_size=1000, rows=50_000, rounds=5)
        bench_appends(dsn, batch_size=100, rows=20_000, rounds=5)
        bench_appends(dsn, batch_size=1, rows=2_000, rounds=5)
        bench_verify(dsn, 1_000_000)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
