"""`python -m numail_workers.send`: the send worker process, configured as its Deployment runs it.

Environment: the common settings in numail_workers.process, and

    NUMAIL_SEND_BATCH, NUMAIL_SEND_LEASE_SECONDS, NUMAIL_SEND_HEARTBEAT_SECONDS,
    NUMAIL_SEND_SETTLE_DELAY_SECONDS, NUMAIL_SEND_POLL_SECONDS, NUMAIL_SEND_MAX_ATTEMPTS,
    NUMAIL_SEND_BACKOFF_SECONDS, NUMAIL_SEND_BACKOFF_MAX_SECONDS, NUMAIL_SEND_DEPTH_SECONDS,
    NUMAIL_UNSUBSCRIBE_URL

SIGTERM (or SIGINT) stops it gracefully: the message being handed over is finished and
recorded, the rest of the batch is released for another worker, and the process exits 0.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from functools import partial

from numail_workers.engine import EngineSettings, SendEngine
from numail_workers.metrics import SendMetrics
from numail_workers.process import ConfigError, env_float, env_int, start_worker
from numail_workers.senders import open_provider_session

log = logging.getLogger("numail.send")


def engine_settings(env: Mapping[str, str]) -> EngineSettings:
    lease = env_float(env, "NUMAIL_SEND_LEASE_SECONDS", 60.0)
    return EngineSettings(
        batch_size=env_int(env, "NUMAIL_SEND_BATCH", 50),
        lease_seconds=lease,
        heartbeat_seconds=env_float(env, "NUMAIL_SEND_HEARTBEAT_SECONDS", lease / 4),
        settle_delay_seconds=env_float(env, "NUMAIL_SEND_SETTLE_DELAY_SECONDS", 2 * lease),
        poll_seconds=env_float(env, "NUMAIL_SEND_POLL_SECONDS", 5.0),
        max_attempts=env_int(env, "NUMAIL_SEND_MAX_ATTEMPTS", 8),
        backoff_seconds=env_float(env, "NUMAIL_SEND_BACKOFF_SECONDS", 30.0),
        backoff_max_seconds=env_float(env, "NUMAIL_SEND_BACKOFF_MAX_SECONDS", 3600.0),
        unsubscribe_url=env.get("NUMAIL_UNSUBSCRIBE_URL") or None,
        depth_interval_seconds=env_float(env, "NUMAIL_SEND_DEPTH_SECONDS", 10.0),
    )


def main(argv: list[str] | None = None) -> int:
    try:
        worker, settings = start_worker(
            "python -m numail_workers.send",
            __doc__,
            argv,
            log,
            "finishing the message in hand",
            engine_settings,
        )
    except (ConfigError, ValueError) as err:
        log.error("configuration: %s", err)
        return 2
    worker.serve_metrics()
    engine = SendEngine(
        dsn=worker.args.database_url,
        workspace_id=worker.workspace_id,
        settings=settings,
        credentials=worker.credentials,
        keys=worker.keys,
        open_session=partial(open_provider_session, worker.endpoints),
        metrics=SendMetrics(worker.args.workspace),
    )
    engine.run(worker.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
