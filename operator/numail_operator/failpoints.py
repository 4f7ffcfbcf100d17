"""Named crash points for tests: NUMAIL_FAILPOINT=<name>[,<name>...] exits the process there.

A failpoint stands for the worst moment to lose the Pod (an OOM kill, a node going away), so it
exits with 137 (SIGKILL's status) through os._exit: no finally blocks, no atexit, no flushing
beyond this module's own log line. Each name is listed here and used at exactly one place.
Unset in production; the variable is read at every hit so a test can arm it per process.

    mailbox.after-seal   the sealed Secret is written; the intake Secret is not yet deleted
"""

from __future__ import annotations

import logging
import os
import sys

KNOWN = frozenset({"mailbox.after-seal"})
EXIT_STATUS = 137

log = logging.getLogger(__name__)


def armed(name: str) -> bool:
    wanted = os.environ.get("NUMAIL_FAILPOINT", "")
    return name in {part.strip() for part in wanted.split(",")}


def hit(name: str) -> None:
    """Exit here if NUMAIL_FAILPOINT names this point; otherwise do nothing."""
    if name not in KNOWN:
        raise ValueError(f"unknown failpoint {name!r}; add it to failpoints.KNOWN")
    if armed(name):
        log.warning("failpoint %s reached: exiting with status %d", name, EXIT_STATUS)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(EXIT_STATUS)
