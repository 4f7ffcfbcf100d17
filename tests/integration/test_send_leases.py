"""Leases per worker and the queue table (migration 0005), driven through numail.db.jobs as
workers drive it, against the real PostgreSQL: who may send what, and what goes back when a
worker dies, stops or loses track of a batch. Each test names the claim it would catch failing.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import psycopg
import pytest

from numail.db import jobs as jobs_db
from numail.providers.credentials import PasswordCredentials
from tests.support.mail_apis import SendWorld

LEASE = 30.0
SETTLE = 60.0


@pytest.fixture
def world(pg_dsn: str, tmp_path: Path) -> SendWorld:
    return SendWorld.create(pg_dsn, tmp_path)


@pytest.fixture
def conn(world: SendWorld) -> Iterator[psycopg.Connection[object]]:
    with psycopg.connect(world.worker_dsn) as c:
        yield c


def _jobs(world: SendWorld, n: int, daily_cap: int = 10_000) -> list[jobs_db.Enqueued]:
    mailbox = world.add_mailbox(
        f"mb-{uuid.uuid4().hex[:8]}",
        "sales@leases.test",
        PasswordCredentials(password="pw"),
        daily_cap=daily_cap,
    )
    leads = world.add_leads(f"lead{i}-{mailbox.hex[:6]}@leases.test" for i in range(n))
    return world.enqueue(mailbox, leads)


def _claim(
    conn: psycopg.Connection[object], world: SendWorld, owner: str, limit: int = 100
) -> list[jobs_db.ClaimedJob]:
    return jobs_db.claim(
        conn, world.workspace_id, owner, limit, lease_seconds=LEASE, settle_delay_seconds=SETTLE
    )


def _admin(world: SendWorld, sql: str, *params: object) -> None:
    with psycopg.connect(world.admin_dsn, autocommit=True) as admin:
        admin.execute(sql.encode(), list(params))


def _expire(world: SendWorld, owner: str) -> None:
    _admin(
        world,
        "UPDATE send_workers SET lease_until = now() - interval '1 second' "
        "WHERE owner = %s AND workspace_id = %s",
        owner,
        world.workspace_id,
    )


def _queued(world: SendWorld) -> set[UUID]:
    rows = world.query(
        "SELECT job_id FROM send_queue WHERE workspace_id = %s", [world.workspace_id]
    )
    return {UUID(str(r[0])) for r in rows}


def test_enqueued_jobs_wait_in_the_queue_and_a_claim_takes_them_out(
    world: SendWorld, conn: psycopg.Connection[object]
) -> None:
    made = _jobs(world, 5)
    assert _queued(world) == {e.job_id for e in made}
    claimed = _claim(conn, world, "w1", limit=3)
    assert len(claimed) == 3 and {c.state for c in claimed} == {"claimed"}
    assert _queued(world) == {e.job_id for e in made} - {c.job_id for c in claimed}
    (row,) = world.query(
        "SELECT jobs FROM send_workers WHERE owner = 'w1' AND workspace_id = %s",
        [world.workspace_id],
    )
    assert set(row[0]) == {c.job_id for c in claimed}


def test_a_worker_whose_lease_ran_out_loses_its_jobs_to_the_next_claim(
    world: SendWorld, conn: psycopg.Connection[object]
) -> None:
    made = _jobs(world, 4)
    mine = _claim(conn, world, "dead", limit=4)
    started = jobs_db.start_attempts(
        conn, world.workspace_id, "dead", [mine[0].job_id, mine[1].job_id], lease_seconds=LEASE
    )
    assert set(started.attempts) == {mine[0].job_id, mine[1].job_id}
    _expire(world, "dead")

    taken = _claim(conn, world, "alive", limit=10)
    # Claimed but never started: back in the queue and claimed again, nothing was sent.
    assert {t.job_id for t in taken} == {mine[2].job_id, mine[3].job_id}
    # Started: its outcome is unknown, with an attempt row saying so, waiting to be settled.
    for job in mine[:2]:
        state = world.job(job.job_id)
        assert state["state"] == "unknown" and state["lease_owner"] is None
        (attempt,) = world.attempts(job.job_id)
        assert attempt["outcome"] == "unknown" and attempt["worker"] == "dead"
    assert _queued(world) == {mine[0].job_id, mine[1].job_id}
    assert (
        world.query(
            "SELECT 1 FROM send_workers WHERE owner = 'dead' AND workspace_id = %s",
            [world.workspace_id],
        )
        == []
    )
    assert len(made) == 4


def test_a_worker_that_lost_its_lease_can_neither_start_nor_finish_a_send(
    world: SendWorld, conn: psycopg.Connection[object]
) -> None:
    _jobs(world, 2)
    mine = _claim(conn, world, "slow")
    _expire(world, "slow")
    # Not yet taken over, but the lease ran out: nothing may be handed over any more.
    started = jobs_db.start_attempts(
        conn, world.workspace_id, "slow", [j.job_id for j in mine], lease_seconds=LEASE
    )
    assert started.attempts == {}
    _claim(conn, world, "other")
    applied = jobs_db.finish(
        conn, world.workspace_id, "slow", [jobs_db.Outcome(j.job_id, "sent") for j in mine]
    )
    assert applied == {}
    assert (
        jobs_db.heartbeat(
            conn, world.workspace_id, "slow", [], lease_seconds=LEASE, settle_delay_seconds=SETTLE
        )
        == -1
    )


def test_a_heartbeat_hands_back_what_the_worker_no_longer_has_in_hand(
    world: SendWorld, conn: psycopg.Connection[object]
) -> None:
    _jobs(world, 3)
    mine = _claim(conn, world, "w")
    jobs_db.start_attempts(conn, world.workspace_id, "w", [mine[0].job_id], lease_seconds=LEASE)
    # The batch died with an exception: only mine[2] is still in hand.
    kept = jobs_db.heartbeat(
        conn,
        world.workspace_id,
        "w",
        [mine[2].job_id],
        lease_seconds=LEASE,
        settle_delay_seconds=SETTLE,
    )
    assert kept == 1
    assert world.job(mine[0].job_id)["state"] == "unknown"
    assert world.job(mine[1].job_id)["state"] == "scheduled"
    assert world.job(mine[2].job_id)["state"] == "claimed"
    assert _queued(world) == {mine[0].job_id, mine[1].job_id}


def test_a_clean_stop_ends_the_lease_at_once(
    world: SendWorld, conn: psycopg.Connection[object]
) -> None:
    _jobs(world, 1)
    (job,) = _claim(conn, world, "w")
    jobs_db.worker_stopped(conn, world.workspace_id, "w", settle_delay_seconds=SETTLE)
    assert (
        world.query(
            "SELECT 1 FROM send_workers WHERE owner = 'w' AND workspace_id = %s",
            [world.workspace_id],
        )
        == []
    )
    assert world.job(job.job_id)["state"] == "scheduled"
    assert _queued(world) == {job.job_id}


def test_any_writer_that_schedules_a_job_queues_it_and_a_stale_queue_row_sends_nothing(
    world: SendWorld, conn: psycopg.Connection[object]
) -> None:
    made = _jobs(world, 2)
    cancelled, other = made[0].job_id, made[1].job_id
    # A writer outside the engine (a reply stopping the sequence) cancels a waiting job: its
    # queue row is now stale, and the claim that meets it drops it without leasing the job.
    _admin(world, "UPDATE send_jobs SET state = 'cancelled' WHERE id = %s", cancelled)
    claimed = _claim(conn, world, "w")
    assert [c.job_id for c in claimed] == [other]
    assert _queued(world) == set()
    assert world.job(cancelled)["state"] == "cancelled"
    # And one that schedules a job again (an operator, a migration) queues it.
    _admin(
        world, "UPDATE send_jobs SET state = 'scheduled', due_at = now() WHERE id = %s", cancelled
    )
    assert _queued(world) == {cancelled}


def test_every_waiting_job_has_a_queue_row_after_concurrent_claimers(
    world: SendWorld,
) -> None:
    """Nothing scheduled is dropped: 4 threads claim, start and finish with random outcomes."""
    made = _jobs(world, 400)
    errors: list[BaseException] = []

    def work(owner: str) -> None:
        try:
            with psycopg.connect(world.worker_dsn) as c:
                for _ in range(40):
                    got = _claim(c, world, owner, limit=7)
                    if not got:
                        return
                    ids = [g.job_id for g in got]
                    started = jobs_db.start_attempts(
                        c, world.workspace_id, owner, ids[::2], lease_seconds=LEASE
                    )
                    outcomes = [
                        jobs_db.Outcome(i, "sent")
                        if i in started.attempts and n % 3
                        else jobs_db.Outcome(i, "retry" if i in started.attempts else "release")
                        for n, i in enumerate(ids)
                    ]
                    jobs_db.finish(c, world.workspace_id, owner, outcomes)
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    waiting = world.query(
        "SELECT j.id FROM send_jobs j WHERE j.workspace_id = %s "
        "AND j.state IN ('scheduled', 'unknown') AND j.lease_owner IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM send_queue q WHERE q.job_id = j.id)",
        [world.workspace_id],
    )
    assert waiting == []
    states = world.states()
    assert sum(states.values()) == len(made)
    assert set(states) <= {"sent", "scheduled"} and states["sent"] > 0
    doubled = world.query(
        "SELECT send_job_id FROM send_attempts WHERE workspace_id = %s AND outcome = 'sent' "
        "GROUP BY 1 HAVING count(*) > 1",
        [world.workspace_id],
    )
    assert doubled == []


def test_the_fast_path_rewrites_jobs_in_place_without_index_writes(
    world: SendWorld,
) -> None:
    """claimed, sending and sent are HOT updates: the design goal of migration 0005."""
    _jobs(world, 300)
    with psycopg.connect(world.admin_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_stat_reset_single_table_counters('send_jobs'::regclass)")
    with psycopg.connect(world.worker_dsn) as c:
        while got := _claim(c, world, "w", limit=50):
            ids = [g.job_id for g in got]
            jobs_db.start_attempts(c, world.workspace_id, "w", ids, lease_seconds=LEASE)
            jobs_db.finish(c, world.workspace_id, "w", [jobs_db.Outcome(i, "sent") for i in ids])
    # The worker's backend has exited, so its statistics are flushed.
    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(world.admin_dsn, autocommit=True) as admin:
            (updates, hot) = admin.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE relid = 'send_jobs'::regclass"
            ).fetchone() or (0, 0)
        if updates >= 900 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert updates >= 900
    assert hot / updates >= 0.9, f"{hot} of {updates} updates were HOT"


def _sequence_jobs(world: SendWorld, n: int) -> tuple[list[UUID], list[jobs_db.Enqueued]]:
    """n leads, each with step 1 of one sequence scheduled now."""
    mailbox = world.add_mailbox(
        f"seq-{uuid.uuid4().hex[:8]}", "sales@leases.test", PasswordCredentials(password="pw")
    )
    sequence = uuid.uuid4()
    _admin(
        world,
        "INSERT INTO sequences (id, workspace_id, name, state) VALUES (%s, %s, %s, 'active')",
        sequence,
        world.workspace_id,
        f"seq-{sequence.hex[:8]}",
    )
    _admin(
        world,
        "INSERT INTO sequence_steps (workspace_id, sequence_id, position, subject_template, "
        "body_template) VALUES (%s, %s, 1, 'Hi {{first_name}}', 'Hello')",
        world.workspace_id,
        sequence,
    )
    leads = world.add_leads(f"seq{i}-{sequence.hex[:6]}@leases.test" for i in range(n))
    with psycopg.connect(world.worker_dsn) as c:
        made = jobs_db.enqueue(
            c,
            world.workspace_id,
            [
                jobs_db.NewJob(mailbox, lead, f"seq-{lead}", sequence_id=sequence, step=1)
                for lead in leads
            ],
        )
    return leads, made


def _replied(world: SendWorld, lead: UUID) -> None:
    _admin(world, "UPDATE leads SET state = 'replied' WHERE id = %s", lead)


def test_a_sequence_step_of_a_lead_who_replied_is_cancelled_not_sent(
    world: SendWorld, conn: psycopg.Connection[object]
) -> None:
    """The reply detector cancels only waiting jobs; a step claimed before the reply (or
    scheduled after it) is stopped when it would start, or when it is claimed."""
    leads, made = _sequence_jobs(world, 3)
    claimed = _claim(conn, world, "w", limit=2)
    in_hand = {c.job_id for c in claimed}
    waiting = next(e.job_id for e in made if e.job_id not in in_hand)
    for lead in leads:
        _replied(world, lead)

    started = jobs_db.start_attempts(
        conn, world.workspace_id, "w", sorted(in_hand), lease_seconds=LEASE
    )
    assert started.attempts == {} and started.suppressed == []
    assert _claim(conn, world, "w") == []
    for job in made:
        row = world.job(job.job_id)
        assert row["state"] == "cancelled", row
        assert row["last_error"] == "the lead replied: its sequence is stopped"
        assert world.attempts(job.job_id) == []
    assert waiting not in _queued(world)
    (held,) = world.query(
        "SELECT jobs FROM send_workers WHERE owner = 'w' AND workspace_id = %s",
        [world.workspace_id],
    )
    assert held == ([],)


def test_a_one_off_message_to_a_lead_who_replied_is_still_sent(
    world: SendWorld, conn: psycopg.Connection[object]
) -> None:
    """Only sequences stop on a reply: a message a person scheduled by hand goes out."""
    (job,) = _jobs(world, 1)
    (lead,) = world.query("SELECT lead_id FROM send_jobs WHERE id = %s", [job.job_id])
    _replied(world, lead[0])
    (claimed,) = _claim(conn, world, "w")
    started = jobs_db.start_attempts(
        conn, world.workspace_id, "w", [claimed.job_id], lease_seconds=LEASE
    )
    assert started.attempts == {job.job_id: 1}
