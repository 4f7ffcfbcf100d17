"""The send-engine chaos run at a size `make test` can afford: 300 jobs, 3 mailboxes, 2 worker
processes SIGKILLed at random and restarted. tests/chaos/test_send_chaos.py is the full run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.send_chaos import run_send_chaos


def test_workers_killed_at_random_send_300_jobs_exactly_once(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = run_send_chaos(
        pg_dsn,
        tmp_path,
        jobs=300,
        mailboxes=3,
        workers=2,
        kill_interval=(0.4, 1.2),
        timeout=90,
        batch=10,
    )
    with capsys.disabled():
        print("\n" + figures.report())
    assert figures.kills >= 2
    assert figures.failpoint_exits.get("send.after-data", 0) >= 1
    assert figures.settled_found >= figures.failpoint_exits["send.after-data"]
    assert (figures.duplicates, figures.missing, figures.strangers) == (0, 0, 0)
    assert figures.states == {"sent": 300}
    assert figures.delivered == 300
