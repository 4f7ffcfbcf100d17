"""Audit upkeep the operator runs beside its handlers: migrations, spool replay, signed digests."""

from __future__ import annotations

import logging
import threading

import psycopg

from numail import audit
from numail.db import migrate
from numail.db.audit import sign_digest
from numail_operator.settings import Settings

log = logging.getLogger("numail.operator.audit")
_stop = threading.Event()
_thread: threading.Thread | None = None


def migrate_database(settings: Settings) -> list[object]:
    """Bring the schema current before any handler writes; concurrent operators serialise on
    the migrator's advisory lock."""
    assert settings.database_url
    with psycopg.connect(settings.database_url, connect_timeout=10) as conn:
        return list(migrate(conn))


def upkeep_once(settings: Settings) -> tuple[int, int]:
    """Replay the spool, then sign the heads that moved. Returns (replayed, digests)."""
    assert settings.database_url
    with psycopg.connect(settings.database_url, connect_timeout=5) as conn:
        replayed = audit.flush_spool(conn, settings.audit_spool_dir)
        digests = 0
        if settings.audit_signing_key_file:
            key = audit.load_signing_key(settings.audit_signing_key_file)
            digests = len(sign_digest(conn, key))
    return replayed, digests


def _loop(settings: Settings) -> None:
    while not _stop.wait(settings.audit_interval):
        try:
            replayed, digests = upkeep_once(settings)
            if replayed or digests:
                log.info(
                    "audit upkeep: %d spooled events replayed, %d digests signed", replayed, digests
                )
        except (psycopg.Error, audit.AuditError) as err:
            log.warning("audit upkeep deferred: %s", err)


def start(settings: Settings) -> None:
    global _thread
    if _thread is not None:
        return
    _stop.clear()
    _thread = threading.Thread(target=_loop, args=(settings,), name="audit-upkeep", daemon=True)
    _thread.start()


def stop() -> None:
    global _thread
    _stop.set()
    if _thread is not None:
        _thread.join(10)
        _thread = None
