"""Send engine figures: drain N jobs (default 50,000) with a no-op sender and through a real SMTP
sink, against pgqueuer draining N no-op jobs, on one PostgreSQL in the same run.

Run: python bench/send.py [N] [--workers W] [--batch B] [--mailboxes M] [--rounds R] [--no-smtp]

Every side runs W worker processes that start, import and connect first, then wait at a
barrier; the clock runs from the barrier to the moment all N jobs are done: for the engine, no
queue row left and no job in a worker's hands (then all N rows must be `sent`); for pgqueuer,
its queue table empty (a job leaves it when its completion is recorded). Both are polled with
EXISTS, which costs the server next to nothing. pgqueuer uses the same driver as the engine
(psycopg 3; its asyncpg driver is not installed here).

The engine does more per job than pgqueuer does: three state changes (claimed, sending, sent;
HOT updates since migration 0005), a queue row deleted, an attempt row and a sent_messages
row written, a daily-cap counter and two suppression checks, all under row-level security.
pgqueuer does one update and one delete-plus-log. Where the engine's time goes is measured
afterwards with cProfile on one worker draining N/5 jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import multiprocessing as mp
import os
import pstats
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from numail_workers.credentials import DirectoryCredentialSource, LocalKeySource
from numail_workers.engine import EngineSettings, SendEngine
from numail_workers.metrics import SendMetrics
from numail_workers.senders import SenderEndpoints, open_provider_session
from numail_workers.senders.noop import open_noop_session

from numail.keys.local import LocalKeyProvider
from numail.providers.credentials import PasswordCredentials
from tests.support.mail_apis import SendWorld, SmtpSink
from tests.support.postgres import PostgresServer, start_postgres
from tests.support.tls import ServingCert, make_serving_cert

SMTP_PASSWORD = "bench-password"


@dataclass(frozen=True)
class EngineJob:
    """What a worker process needs to build its engine (picklable for multiprocessing)."""

    dsn: str
    workspace: str
    workspace_id: uuid.UUID
    namespace: str
    credentials_dir: Path
    keyring: Path
    batch: int
    sender: str  # "noop" or "smtp"
    mail_ca: str | None


def create_database(server: PostgresServer, name: str) -> str:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return server.dsn(name)


# --- the engine ----------------------------------------------------------------------------


def build_engine(job: EngineJob) -> SendEngine:
    opener: Callable[..., Any]
    if job.sender == "noop":
        opener = open_noop_session
    else:
        from numail.providers.base import ProviderEndpoints

        endpoints = SenderEndpoints(
            providers=ProviderEndpoints(mail_ca_file=job.mail_ca), local_hostname="bench.local"
        )
        opener = partial(open_provider_session, endpoints)
    return SendEngine(
        dsn=job.dsn,
        workspace_id=job.workspace_id,
        settings=EngineSettings(
            batch_size=job.batch,
            lease_seconds=120,
            heartbeat_seconds=30,
            settle_delay_seconds=240,
            poll_seconds=0.2,
        ),
        credentials=DirectoryCredentialSource(
            job.credentials_dir, job.namespace, str(job.workspace_id)
        ),
        keys=LocalKeySource(
            LocalKeyProvider.from_file(job.keyring), job.workspace, str(job.workspace_id)
        ),
        open_session=opener,
        metrics=SendMetrics(job.workspace, registry=_registry()),
    )


def _registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def engine_process(job: EngineJob, ready: Any, go: Any, done: Any) -> None:
    engine = build_engine(job)
    stop = threading.Event()
    threading.Thread(target=lambda: (done.wait(), stop.set()), daemon=True).start()
    ready.release()
    go.wait()
    engine.run(stop)


def prepare_engine(
    server: PostgresServer, n: int, mailboxes: int, sink_port: int | None, root: Path
) -> SendWorld:
    dsn = create_database(server, f"bench_send_{uuid.uuid4().hex[:6]}")
    world = SendWorld.create(dsn, root)
    ids = [
        world.add_mailbox(
            f"box{i}",
            f"box{i}@bench{i}.test",
            PasswordCredentials(password=SMTP_PASSWORD),
            settings={
                "smtp": {"host": "127.0.0.1", "port": sink_port or 2525, "security": "starttls"},
                "imap": {"host": "127.0.0.1", "port": 993},
                "appendToSent": False,
            },
        )
        for i in range(mailboxes)
    ]
    leads = world.add_leads(f"lead{i}@recipients.test" for i in range(n))
    for i, mailbox in enumerate(ids):
        world.enqueue(mailbox, leads[i::mailboxes], subject="Hello {{first_name}}", body="Hi.\n")
    analyze(world.admin_dsn)
    return world


def analyze(dsn: str) -> None:
    """Statistics, as autovacuum keeps them on a live table, and a vacuumed table, so autovacuum
    does not wake up on the freshly loaded rows in the middle of a run. Without statistics the
    planner guesses a workspace holds a few dozen rows and reaches jobs through the row-level
    security predicate instead of their primary key, scanning the whole workspace every batch.
    Both sides get the same treatment."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def run_engine(
    world: SendWorld, n: int, workers: int, batch: int, sender: str, ca: str | None
) -> float:
    job = EngineJob(
        world.worker_dsn,
        world.workspace,
        world.workspace_id,
        world.namespace,
        world.credentials_dir,
        world.keyring,
        batch,
        sender,
        ca,
    )
    ctx = mp.get_context("fork")
    ready, go, done = ctx.Semaphore(0), ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(target=engine_process, args=(job, ready, go, done)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    with psycopg.connect(world.admin_dsn, autocommit=True) as conn:
        started = time.perf_counter()
        go.set()
        while _engine_busy(conn):
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        (sent,) = conn.execute(
            "SELECT count(*) FROM send_jobs WHERE state = 'sent'"
        ).fetchone() or (0,)
        if sent != n:
            raise SystemExit(f"the engine drained with {sent} of {n} jobs sent")
    done.set()
    for p in procs:
        p.join(30)
    return elapsed


def _engine_busy(conn: psycopg.Connection[Any]) -> bool:
    """Jobs are waiting (queued) or in a worker's hands; without scanning send_jobs, whose
    count(*) 20 times a second would take a core's share from the engine being timed."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM send_queue) "
        "OR EXISTS (SELECT 1 FROM send_workers WHERE jobs <> '{}')"
    ).fetchone()
    return bool(row and row[0])


def profile_engine(world: SendWorld, batch: int) -> str:
    """cProfile of one engine draining the queue in this process: where a job's time goes."""
    job = EngineJob(
        world.worker_dsn,
        world.workspace,
        world.workspace_id,
        world.namespace,
        world.credentials_dir,
        world.keyring,
        batch,
        "noop",
        None,
    )
    engine = build_engine(job)
    stop = threading.Event()
    profiler = cProfile.Profile()
    with psycopg.connect(world.admin_dsn, autocommit=True) as conn:

        def watch() -> None:
            while _engine_busy(conn):
                time.sleep(0.05)
            stop.set()

        threading.Thread(target=watch, daemon=True).start()
        started = time.perf_counter()
        profiler.enable()
        engine.run(stop)
        profiler.disable()
        wall = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    raw: Any = stats.stats  # type: ignore[attr-defined]

    def cumulative(module: str, function: str) -> float:
        return sum(
            v[3] for (path, _, name), v in raw.items() if path.endswith(module) and name == function
        )

    parts = {
        "claim (numail_claim_send_jobs)": cumulative("numail/db/jobs.py", "claim"),
        "start_attempts (-> sending)": cumulative("numail/db/jobs.py", "start_attempts"),
        "finish (-> sent, sent_messages)": cumulative("numail/db/jobs.py", "finish"),
        "sender + credential opening": cumulative("numail_workers/engine.py", "_open")
        + cumulative("senders/noop.py", "send"),
        "idle (waiting for work)": cumulative("numail_workers/engine.py", "_idle"),
    }
    idle = parts.pop("idle (waiting for work)")
    busy = cumulative("numail_workers/engine.py", "run") - idle
    lines = [
        f"  one worker, cProfile on, {wall:.2f}s wall, {busy:.2f}s busy (shares of busy time):"
    ]
    for name, seconds in parts.items():
        lines.append(f"    {name:34s} {seconds:6.2f}s  {100 * seconds / busy:5.1f}%")
    other = busy - sum(parts.values())
    lines.append(
        f"    {'engine bookkeeping (Python)':34s} {other:6.2f}s  {100 * other / busy:5.1f}%"
    )
    waits = cumulative("psycopg/connection.py", "wait") + cumulative(
        "psycopg/connection.py", "execute"
    )
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(8)
    top = "\n".join("    " + line for line in out.getvalue().splitlines()[-14:] if line.strip())
    lines.append(f"  psycopg execute (incl. waiting on PostgreSQL): {waits:.2f}s")
    lines.append(f"  top functions by own time:\n{top}")
    return "\n".join(lines)


# --- pgqueuer -------------------------------------------------------------------------------


def pgqueuer_process(dsn: str, batch: int, ready: Any, go: Any) -> None:
    from pgqueuer import QueueManager
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.models import Job
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        qm = QueueManager(Queries(PsycopgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            return None

        ready.release()
        await asyncio.to_thread(go.wait)
        await qm.run(mode=QueueExecutionMode.drain, batch_size=batch)
        await conn.close()

    asyncio.run(main())


async def prepare_pgqueuer(dsn: str, n: int) -> None:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    queries = Queries(PsycopgDriver(conn))
    await queries.install()
    for start in range(0, n, 5000):
        size = min(5000, n - start)
        await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
    await conn.close()
    analyze(dsn)


def run_pgqueuer(server: PostgresServer, n: int, workers: int, batch: int) -> tuple[float, float]:
    """(seconds until the queue table is empty, seconds until every drain returned)."""
    dsn = create_database(server, f"bench_pgq_{uuid.uuid4().hex[:6]}")
    asyncio.run(prepare_pgqueuer(dsn, n))
    ctx = mp.get_context("fork")
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [
        ctx.Process(target=pgqueuer_process, args=(dsn, batch, ready, go)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        go.set()
        # A job leaves pgqueuer's table when its completion is recorded: the same moment the
        # engine's row turns `sent`, so both sides are timed to the same event.
        while True:
            row = conn.execute("SELECT EXISTS (SELECT 1 FROM pgqueuer)").fetchone()
            if row == (False,):
                break
            time.sleep(0.05)
        empty = time.perf_counter() - started
    for p in procs:
        p.join()
    drained = time.perf_counter() - started
    return empty, drained


# --- the SMTP sink, in its own process so it does not share the workers' GIL ---------------


def sink_process(
    cert: ServingCert, mailboxes: int, port_out: Any, stop: Any, count_out: Any
) -> None:
    import logging

    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's deprecation notes
    passwords = {f"box{i}@bench{i}.test": SMTP_PASSWORD for i in range(mailboxes)}
    sink = SmtpSink(cert, passwords=passwords, keep_messages=False).start()
    port_out.value = sink.port
    stop.wait()
    count_out.value = sink.log.total()
    sink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("n", nargs="?", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--mailboxes", type=int, default=10)
    parser.add_argument("--no-smtp", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    n, workers, batch = args.n, args.workers, args.batch
    os.environ.setdefault("NUMAIL_LOG_LEVEL", "WARNING")
    import logging

    logging.basicConfig(level=logging.WARNING)
    server = start_postgres()
    root = Path(tempfile.mkdtemp(prefix="numail-bench-send-"))
    print(
        f"bench/send.py: {n} jobs, {workers} worker processes, batch {batch}, "
        f"{args.mailboxes} mailboxes, PostgreSQL 15 on this machine ({os.cpu_count()} CPUs)"
    )
    try:
        # Two rounds, interleaved, so neither side always runs on a server the other just
        # loaded; the best run of each side is compared.
        pgq_runs: list[float] = []
        noop_runs: list[float] = []
        for round_ in range(args.rounds):
            pgq, drained = run_pgqueuer(server, n, workers, batch)
            pgq_runs.append(pgq)
            print(
                f"  round {round_ + 1}: pgqueuer {_version('pgqueuer')}, no-op jobs: "
                f"{pgq:6.2f}s {n / pgq:7.0f} jobs/s (every drain returned after {drained:.2f}s)"
            )
            world = prepare_engine(server, n, args.mailboxes, None, root / f"noop{round_}")
            noop = run_engine(world, n, workers, batch, "noop", None)
            noop_runs.append(noop)
            print(
                f"  round {round_ + 1}: numail engine, no-op sender: "
                f"{noop:6.2f}s {n / noop:7.0f} jobs/s"
            )
        pgq, noop = min(pgq_runs), min(noop_runs)
        print(
            f"  best: pgqueuer {n / pgq:.0f} jobs/s, engine (no-op) {n / noop:.0f} jobs/s: "
            f"{pgq / noop:.2f}x pgqueuer"
        )

        if not args.no_smtp:
            ctx = mp.get_context("fork")
            cert = make_serving_cert(root / "tls")
            port, count, stop = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Event()
            sink = ctx.Process(target=sink_process, args=(cert, args.mailboxes, port, stop, count))
            sink.start()
            while port.value == 0:
                time.sleep(0.05)
            world = prepare_engine(server, n, args.mailboxes, port.value, root / "smtp")
            smtp = run_engine(world, n, workers, batch, "smtp", str(cert.ca))
            stop.set()
            sink.join(30)
            print(
                f"  numail engine, SMTP (STARTTLS, AUTH) to a local sink: {smtp:7.2f}s  "
                f"{n / smtp:8.0f} jobs/s  ({pgq / smtp:.2f}x pgqueuer); sink accepted "
                f"{count.value}"
            )

        world = prepare_engine(server, max(n // 5, 1000), args.mailboxes, None, root / "profile")
        print("where the no-op engine's time goes:")
        print(profile_engine(world, batch))
    finally:
        server.stop()


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
