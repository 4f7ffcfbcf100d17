"""Crash injection for tests: NUMAIL_FAILPOINT=<name>[:<nth hit>] makes the process die there.

The chaos and crash-window tests need a worker to die at an exact point (after claiming, after
the provider accepted a message) without cooperating with anyone: os._exit skips cleanup,
flushes nothing and releases nothing, which is what SIGKILL or a lost node does. Unset, a
failpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import sys
import threading

EXIT_CODE = 137  # what a shell reports for SIGKILL, so logs read the same
_lock = threading.Lock()
_hits: dict[str, int] = {}


def _configured() -> tuple[str, int] | None:
    spec = os.environ.get("NUMAIL_FAILPOINT", "").strip()
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    return name, int(nth) if nth else 1


def failpoint(name: str) -> None:
    """Die here if NUMAIL_FAILPOINT names this point (on its nth hit, first by default)."""
    configured = _configured()
    if configured is None or configured[0] != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name]
    if hit == configured[1]:
        sys.stderr.write(f"failpoint {name} reached (hit {hit}): exiting with {EXIT_CODE}\n")
        sys.stderr.flush()
        os._exit(EXIT_CODE)
