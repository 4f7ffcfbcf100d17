"""Chaos for the send engine: 5,000 jobs, 10 mailboxes, 4 worker processes SIGKILLed at random
and restarted; nothing may be sent twice and nothing may be lost.

NUMAIL_CHAOS_JOBS, NUMAIL_CHAOS_MAILBOXES, NUMAIL_CHAOS_WORKERS and NUMAIL_CHAOS_SEED change the
run; the figures are printed and written to $TMPDIR/numail-send-chaos.json.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.send_chaos import run_send_chaos


def test_workers_killed_at_random_send_every_job_exactly_once(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = int(os.environ.get("NUMAIL_CHAOS_JOBS", "5000"))
    seed = os.environ.get("NUMAIL_CHAOS_SEED")
    figures = run_send_chaos(
        pg_dsn,
        tmp_path,
        jobs=jobs,
        mailboxes=int(os.environ.get("NUMAIL_CHAOS_MAILBOXES", "10")),
        workers=int(os.environ.get("NUMAIL_CHAOS_WORKERS", "4")),
        kill_interval=(0.5, 2.5),
        timeout=max(300.0, jobs / 10),
        seed=int(seed) if seed else None,
    )
    with capsys.disabled():
        print("\n" + figures.report())
    assert figures.kills >= 3, "too few kills to mean anything; raise NUMAIL_CHAOS_JOBS"
    # Every failpoint exit after a 250 left an accepted, unrecorded message: each was settled.
    assert figures.failpoint_exits.get("send.after-data", 0) >= 1
    assert figures.settled_found >= figures.failpoint_exits["send.after-data"]
    assert figures.duplicates == 0
    assert figures.missing == 0
    assert figures.strangers == 0
    assert figures.not_final == 0
    assert figures.states == {"sent": jobs}
    assert figures.delivered == jobs
