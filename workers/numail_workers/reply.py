"""`python -m numail_workers.reply`: the reply detector process, as its Deployment runs it.

It reads every mailbox of one workspace (IMAP, Gmail history, Graph delta), tells replies from
auto-replies and bounces, stops the sequences of leads who replied or hard-bounced, and
suppresses hard bounces; docs/reply-detector.md describes the rules.

Environment (flags override the first four), shared with the send worker where it can be:

    NUMAIL_WORKSPACE, NUMAIL_WORKSPACE_UID   the workspace (its name; its UID is the DB id)
    NUMAIL_DATABASE_URL                      libpq URL or DSN of a numail_worker login
    NUMAIL_METRICS_PORT                      /metrics (default 9102; 0 turns it off)
    NUMAIL_KEYSERVICE_URL, NUMAIL_KEYSERVICE_TOKEN (token file), NUMAIL_KEYSERVICE_CA_FILE
    NUMAIL_KEY_SOURCE                        keyservice (default) | local (tests, make dev:
                                             NUMAIL_LOCAL_KEYRING_FILE)
    NUMAIL_CREDENTIAL_SOURCE                 kubernetes (default) | directory:<path> (tests)
    NUMAIL_NAMESPACE                         default ws-<workspace>
    NUMAIL_KUBECONFIG, NUMAIL_KUBE_TOKEN_FILE, NUMAIL_KUBE_CA_FILE   how to reach the API server
    NUMAIL_GOOGLE_TOKEN_URI, NUMAIL_MICROSOFT_AUTHORITY_HOST, NUMAIL_GRAPH_URL,
    NUMAIL_GMAIL_API_URL, NUMAIL_PROVIDER_CA_FILE, NUMAIL_MAIL_CA_FILE, NUMAIL_PROVIDER_TIMEOUT
    NUMAIL_REPLY_POLL_SECONDS                how often each mailbox is read (default 60)
    NUMAIL_REPLY_BACKOFF_MAX_SECONDS         longest wait after failed polls (default 900)
    NUMAIL_REPLY_LOOKBACK_DAYS               how far back a mailbox with no cursor is read
                                             (default 14)
    NUMAIL_REPLY_BATCH                       IMAP messages per mailbox per poll (default 200)
    NUMAIL_REPLY_MAX_MESSAGE_BYTES           larger messages are read by header only
                                             (default 10485760)
    NUMAIL_LOG_LEVEL                         default INFO

SIGTERM (or SIGINT) stops it gracefully: the message in hand is recorded, the poll ends, and
the process exits 0. What was read but not recorded is read again by the next run.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from datetime import timedelta
from functools import partial
from uuid import UUID

from numail import redact
from numail_workers.inbound_detector import DetectorSettings, ReplyDetector
from numail_workers.inbound_readers import ReaderSettings, open_reader
from numail_workers.metrics import ReplyMetrics
from numail_workers.send import (
    DEFAULT_METRICS_PORT,
    ConfigError,
    configure_logging,
    credential_source,
    key_source,
    sender_endpoints,
)
from numail_workers.send import _float as env_float
from numail_workers.send import _int as env_int

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


def parse_args(argv: list[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m numail_workers.reply", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--workspace", default=env.get("NUMAIL_WORKSPACE"))
    parser.add_argument("--workspace-uid", default=env.get("NUMAIL_WORKSPACE_UID"))
    parser.add_argument("--database-url", default=env.get("NUMAIL_DATABASE_URL"))
    parser.add_argument("--metrics-port", default=env.get("NUMAIL_METRICS_PORT"))
    args = parser.parse_args(argv)
    for flag in ("workspace", "workspace_uid", "database_url"):
        if not getattr(args, flag):
            parser.error(f"--{flag.replace('_', '-')} (or NUMAIL_{flag.upper()}) is required")
    try:
        UUID(args.workspace_uid)
    except ValueError:
        parser.error("the workspace UID must be a UUID (the Workspace's metadata.uid)")
    return args


def install_stop_signals() -> threading.Event:
    stop = threading.Event()

    def request_stop(signum: int, _: object) -> None:
        log.info(
            "%s received: recording the message in hand, then stopping", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def main(argv: list[str] | None = None) -> int:
    redact.install_redaction()  # before anything can log
    env = os.environ
    args = parse_args(argv, env)
    configure_logging(env)
    redact.register(args.database_url)
    stop = install_stop_signals()
    try:
        metrics_port = env_int(
            {"NUMAIL_METRICS_PORT": args.metrics_port or ""},
            "NUMAIL_METRICS_PORT",
            DEFAULT_METRICS_PORT,
        )
        settings = detector_settings(env)
        credentials = credential_source(env, args.workspace, args.workspace_uid)
        keys = key_source(env, args.workspace, args.workspace_uid)
        endpoints = sender_endpoints(env)
    except (ConfigError, ValueError) as err:
        log.error("configuration: %s", err)
        return 2
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    detector = ReplyDetector(
        dsn=args.database_url,
        workspace_id=UUID(args.workspace_uid),
        settings=settings,
        credentials=credentials,
        keys=keys,
        open_reader=partial(open_reader, endpoints, settings.reader),
        metrics=ReplyMetrics(args.workspace),
    )
    detector.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
