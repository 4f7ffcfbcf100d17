"""`python -m numail_workers.reply`: the reply worker's process, which detects nothing yet.

The workspace Deployment runs this module, so it must start, serve /metrics and stop cleanly
on SIGTERM like every worker. Reply detection (IMAP IDLE or poll, Gmail history, Graph delta,
matched to sent_messages by In-Reply-To and References) is not implemented; the process says
so at start and every hour, and reports numail_reply_detection_implemented 0, so nobody
mistakes it for a working detector.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from prometheus_client import Gauge, start_http_server

from numail import redact

log = logging.getLogger("numail.reply")
DEFAULT_METRICS_PORT = 9102
REMINDER_SECONDS = 3600.0

IMPLEMENTED = Gauge(
    "numail_reply_detection_implemented", "1 once this worker detects replies; 0 for now"
)


def main(argv: list[str] | None = None) -> int:
    redact.install_redaction()
    logging.basicConfig(
        level=os.environ.get("NUMAIL_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    redact.install_redaction()
    stop = threading.Event()

    def request_stop(signum: int, _: object) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    port = int(os.environ.get("NUMAIL_METRICS_PORT", DEFAULT_METRICS_PORT))
    if port:
        start_http_server(port)
    IMPLEMENTED.set(0)
    workspace = os.environ.get("NUMAIL_WORKSPACE", "?")
    while True:
        log.warning(
            "reply detection is not implemented yet: workspace %s gets no reply, auto-reply or "
            "bounce handling from this worker",
            workspace,
        )
        if stop.wait(REMINDER_SECONDS):
            break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
