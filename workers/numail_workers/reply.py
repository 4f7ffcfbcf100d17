"""`python -m numail_workers.reply`: the reply detector process, as its Deployment runs it.

It reads every mailbox of one workspace (IMAP, Gmail history, Graph delta), tells replies from
auto-replies and bounces, stops the sequences of leads who replied or hard-bounced, and
suppresses hard bounces; docs/reply-detector.md describes the rules.

Environment: the common settings in numail_workers.process, and

    NUMAIL_REPLY_POLL_SECONDS                how often each mailbox is read (default 60)
    NUMAIL_REPLY_BACKOFF_MAX_SECONDS         longest wait after failed polls (default 900)
    NUMAIL_REPLY_LOOKBACK_DAYS               how far back a mailbox with no cursor is read
                                             (default 14)
    NUMAIL_REPLY_BATCH                       IMAP messages per mailbox per poll (default 200)
    NUMAIL_REPLY_MAX_MESSAGE_BYTES           larger messages are read by header only
                                             (default 10485760)

SIGTERM (or SIGINT) stops it gracefully: the message in hand is recorded, the poll ends, and
the process exits 0. What was read but not recorded is read again by the next run.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from datetime import timedelta
from functools import partial

from numail_workers.inbound_detector import DetectorSettings, ReplyDetector
from numail_workers.inbound_readers import ReaderSettings, open_reader
from numail_workers.metrics import ReplyMetrics
from numail_workers.process import ConfigError, env_float, env_int, start_worker

log = logging.getLogger("numail.reply")


def detector_settings(env: Mapping[str, str]) -> DetectorSettings:
    poll = env_float(env, "NUMAIL_REPLY_POLL_SECONDS", 60.0)
    if poll <= 0:
        raise ConfigError("NUMAIL_REPLY_POLL_SECONDS must be positive")
    backoff = env_float(env, "NUMAIL_REPLY_BACKOFF_MAX_SECONDS", max(900.0, poll))
    if backoff < poll:
        raise ConfigError(
            "NUMAIL_REPLY_BACKOFF_MAX_SECONDS must be at least NUMAIL_REPLY_POLL_SECONDS"
        )
    lookback = env_float(env, "NUMAIL_REPLY_LOOKBACK_DAYS", 14.0)
    batch = env_int(env, "NUMAIL_REPLY_BATCH", 200)
    largest = env_int(env, "NUMAIL_REPLY_MAX_MESSAGE_BYTES", 10 * 1024 * 1024)
    for name, value in (
        ("NUMAIL_REPLY_LOOKBACK_DAYS", lookback),
        ("NUMAIL_REPLY_BATCH", batch),
        ("NUMAIL_REPLY_MAX_MESSAGE_BYTES", largest),
    ):
        if value <= 0:
            raise ConfigError(f"{name} must be positive")
    return DetectorSettings(
        poll_seconds=poll,
        backoff_max_seconds=backoff,
        reader=ReaderSettings(
            lookback=timedelta(days=lookback), limit=batch, max_message_bytes=largest
        ),
    )


def main(argv: list[str] | None = None) -> int:
    try:
        worker, settings = start_worker(
            "python -m numail_workers.reply",
            __doc__,
            argv,
            log,
            "recording the message in hand, then stopping",
            detector_settings,
        )
    except (ConfigError, ValueError) as err:
        log.error("configuration: %s", err)
        return 2
    worker.serve_metrics()
    detector = ReplyDetector(
        dsn=worker.args.database_url,
        workspace_id=worker.workspace_id,
        settings=settings,
        credentials=worker.credentials,
        keys=worker.keys,
        open_reader=partial(open_reader, worker.endpoints, settings.reader),
        metrics=ReplyMetrics(worker.args.workspace),
    )
    detector.run(worker.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
