"""The send-engine chaos run: worker processes SIGKILLed at random moments and restarted while
they drain a queue into a real SMTP sink; afterwards every Message-ID is counted.

Used by tests/chaos/test_send_chaos.py (5,000 jobs, `make test-chaos`) and by
tests/integration/test_send_chaos_small.py (300 jobs, in `make test`).

The sink files each accepted message in the sender's Sent folder of a real Dovecot before it
answers 250, as Gmail and Microsoft 365 do; a kill can land anywhere, including between that
250 and the worker recording it, and such a job must be settled by IMAP SEARCH, not resent.

Random SIGKILLs land where the workers spend their time, which is mostly not the narrow window
between a 250 and its record; so besides them, the first worker and some restarted ones carry a
failpoint that kills them at a random hit of `send.after-data` (just after a 250) or
`send.after-claim`. Each after-data exit leaves one accepted, unrecorded message behind, so the
run can check that every one of them was settled as found.
"""

from __future__ import annotations

import json
import random
import signal
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from numail.providers.credentials import PasswordCredentials
from tests.support.mail import start_dovecot
from tests.support.mail_apis import MaildirSent, SendWorld, SmtpSink, WorkerProcess
from tests.support.tls import make_serving_cert

FINAL = {"sent", "failed", "suppressed", "cancelled"}


@dataclass
class ChaosFigures:
    jobs: int
    mailboxes: int
    workers: int
    seed: int = 0
    kills: int = 0
    seconds: float = 0.0
    delivered: int = 0  # messages the sink accepted
    duplicates: int = 0  # accepted more than once, summed over Message-IDs
    missing: int = 0  # jobs whose Message-ID the sink never accepted
    strangers: int = 0  # Message-IDs the sink accepted that belong to no job
    not_final: int = 0
    states: dict[str, int] = field(default_factory=dict)
    failpoint_exits: dict[str, int] = field(default_factory=dict)
    unknown_attempts: int = 0
    settled_found: int = 0
    settled_not_found: int = 0
    resent_after_not_found: int = 0

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    def report(self) -> str:
        return (
            f"send chaos (NUMAIL_CHAOS_SEED={self.seed}): {self.jobs} jobs, {self.mailboxes} "
            f"mailboxes, {self.workers} workers, "
            f"{self.kills} SIGKILLs and {sum(self.failpoint_exits.values())} failpoint exits "
            f"{self.failpoint_exits} in {self.seconds:.1f}s ({self.rate:.0f} jobs/s)\n"
            f"  sink accepted {self.delivered}; duplicates {self.duplicates}, missing "
            f"{self.missing}, strangers {self.strangers}; jobs not final {self.not_final}\n"
            f"  states {self.states}\n"
            f"  unknown outcomes {self.unknown_attempts}: settled found {self.settled_found}, "
            f"not found {self.settled_not_found} (then sent again {self.resent_after_not_found})"
        )


def _kill(worker: WorkerProcess) -> None:
    if worker.alive():
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(10)


def run_send_chaos(
    pg_dsn: str,
    root: Path,
    *,
    jobs: int,
    mailboxes: int,
    workers: int,
    kill_interval: tuple[float, float],
    timeout: float,
    batch: int = 25,
    seed: int | None = None,
    failpoint_rate: float = 0.4,
    min_age: float = 1.0,
) -> ChaosFigures:
    # A run that fails must be repeatable: the seed is drawn here when none is given, and
    # reported (NUMAIL_CHAOS_SEED replays it).
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    figures = ChaosFigures(jobs, mailboxes, workers, seed)
    cert = make_serving_cert(root / "tls")
    users = {f"box{i}@chaos{i}.test": f"chaos-password-{i}" for i in range(mailboxes)}
    dovecot = start_dovecot(cert, users)
    sent = MaildirSent(dovecot.root)
    for user in users:
        sent.prepare(user)
    sink = SmtpSink(cert, passwords=users, sent_copy=sent, keep_messages=False).start()
    world = SendWorld.create(pg_dsn, root / "world")
    world.extra_env.update(
        NUMAIL_MAIL_CA_FILE=str(cert.ca), NUMAIL_SEND_BATCH=str(batch), NUMAIL_LOG_LEVEL="WARNING"
    )
    try:
        ids = [
            world.add_mailbox(
                f"box{i}",
                address,
                PasswordCredentials(password=password),
                settings={
                    "smtp": {"host": "127.0.0.1", "port": sink.port, "security": "starttls"},
                    "imap": {"host": "127.0.0.1", "port": dovecot.imaps_port, "security": "tls"},
                    "appendToSent": False,
                },
            )
            for i, (address, password) in enumerate(users.items())
        ]
        leads = world.add_leads(f"lead{n}@recipients.test" for n in range(jobs))
        enqueued = []
        for i, mailbox in enumerate(ids):
            enqueued += world.enqueue(mailbox, leads[i::mailboxes])
        message_ids = {e.message_id for e in enqueued}
        assert len(message_ids) == jobs

        def failpoint(first: bool) -> dict[str, str]:
            if first:
                return {"NUMAIL_FAILPOINT": f"send.after-data:{rng.randint(2, 5)}"}
            if rng.random() >= failpoint_rate:
                return {}
            point = rng.choice(["send.after-data", "send.after-data", "send.after-claim"])
            return {"NUMAIL_FAILPOINT": f"{point}:{rng.randint(1, 3 * batch)}"}

        started = time.monotonic()
        restarts = Counter[int]()
        slots = [world.start_worker(f"chaos-{i}", **failpoint(i == 0)) for i in range(workers)]
        born = [started] * workers
        next_kill = started + rng.uniform(*kill_interval)

        def restart(i: int) -> None:
            restarts[i] += 1
            slots[i] = world.start_worker(f"chaos-{i}-{restarts[i]}", **failpoint(False))
            born[i] = time.monotonic()

        while True:
            states = world.states()
            if sum(n for s, n in states.items() if s in FINAL) == jobs:
                break
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"chaos run (seed {seed}) did not finish in {timeout}s: {states}"
                )
            for i, worker in enumerate(slots):
                if worker.alive():
                    continue
                reached = [
                    p
                    for p in ("send.after-data", "send.after-claim")
                    if f"failpoint {p} reached" in worker.output()
                ]
                if worker.process.returncode != 137 or not reached:
                    # Died on its own: that is a bug, not chaos.
                    raise AssertionError(
                        f"worker {worker.name} exited (seed {seed}):\n{worker.output()[-3000:]}"
                    )
                figures.failpoint_exits[reached[0]] = figures.failpoint_exits.get(reached[0], 0) + 1
                restart(i)
            now = time.monotonic()
            if now >= next_kill:
                # Only workers that had time to start: killing one still importing tests nothing.
                grown = [i for i in range(workers) if now - born[i] >= min_age]
                if grown:
                    i = rng.choice(grown)
                    _kill(slots[i])
                    figures.kills += 1
                    restart(i)
                next_kill = now + rng.uniform(*kill_interval)
            time.sleep(0.05)
        figures.seconds = time.monotonic() - started
        world.stop_workers()

        counts = sink.log.snapshot()
        figures.delivered = sum(counts.values())
        figures.duplicates = sum(n - 1 for mid, n in counts.items() if n > 1)
        figures.missing = sum(1 for mid in message_ids if counts[mid] == 0)
        figures.strangers = sum(n for mid, n in counts.items() if mid not in message_ids)
        figures.states = dict(world.states())
        figures.not_final = sum(n for s, n in figures.states.items() if s not in FINAL)
        rows = world.query(
            "SELECT a.outcome, a.settled, count(*) FROM send_attempts a "
            "WHERE a.workspace_id = %s AND a.outcome = 'unknown' GROUP BY 1, 2",
            [world.workspace_id],
        )
        for _, settled, n in rows:
            figures.unknown_attempts += n
            if settled == "found":
                figures.settled_found += n
            elif settled == "not_found":
                figures.settled_not_found += n
        figures.resent_after_not_found = world.query(
            "SELECT count(*) FROM send_attempts a WHERE a.workspace_id = %s AND a.outcome = "
            "'sent' AND EXISTS (SELECT 1 FROM send_attempts b WHERE b.send_job_id = "
            "a.send_job_id AND b.attempt < a.attempt AND b.settled = 'not_found')",
            [world.workspace_id],
        )[0][0]
        report = Path(tempfile.gettempdir()) / "numail-send-chaos.json"
        report.write_text(json.dumps({**asdict(figures), "rate": figures.rate}, indent=2))
        return figures
    finally:
        world.stop_workers()
        sink.stop()
        dovecot.stop()
