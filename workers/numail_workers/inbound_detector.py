"""The reply detector's loop: poll each mailbox of the workspace, classify, record.

One detector serves one workspace with one connection. For each mailbox that is due it opens
the credentials (the same CredentialSource, KeySource and open_credentials path as the send
engine), reads what arrived since the mailbox's cursor, and drops the credentials as soon as
the poll ends. Every message is recorded in its own workspace-scoped transaction
(numail.db.replies), together with the IMAP cursor where each message moves it, so a crash
re-reads at most what was not recorded yet, and re-reading changes nothing.

A mailbox whose provider can't be read (unreachable, login refused, credential not available)
keeps its cursor and is polled again after an exponential backoff; the other mailboxes are not
held up, and neither are they by a mailbox whose poll fails in an unexpected way. A message the
database refuses (a value it can't store or index) is counted `unreadable` and the cursor
moves past it: one hostile message must not stall the mailbox. Nothing about a message's
content is logged: only counts, the classification reason (a header name and value, or DSN
status codes) and lead ids.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus

from numail import crypto
from numail.db import jobs as jobs_db
from numail.db import replies as replies_db
from numail.keys import KeyProviderError
from numail.providers.base import ProviderError
from numail.providers.credentials import Credentials
from numail_workers.credentials import CredentialError, CredentialSource, KeySource, open_for_use
from numail_workers.inbound import classify
from numail_workers.inbound_readers import (
    InboundMessage,
    InboxReader,
    PollUnavailable,
    ReaderSettings,
)
from numail_workers.mailboxes import MailboxProfile, MailboxSettingsError, profile_from_row
from numail_workers.metrics import ReplyMetrics

log = logging.getLogger("numail.reply")

# Errors the database raises about the values of one message, not about the connection or the
# schema: that message is skipped. Connection errors (OperationalError) still stop the round.
MESSAGE_DB_ERRORS: tuple[type[Exception], ...] = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
)

ReaderOpener = Callable[[MailboxProfile, Credentials, str | None], InboxReader]


@dataclass(frozen=True)
class DetectorSettings:
    poll_seconds: float = 60.0
    backoff_max_seconds: float = 900.0
    reader: ReaderSettings = field(default_factory=ReaderSettings)

    def __post_init__(self) -> None:
        if self.poll_seconds <= 0 or self.backoff_max_seconds < self.poll_seconds:
            raise ValueError("poll_seconds must be positive and at most backoff_max_seconds")


@dataclass
class PollResult:
    """What one mailbox's poll did; `error` is set when the provider could not be read."""

    mailbox_id: UUID
    counts: Counter[str] = field(default_factory=Counter)
    cancelled_jobs: int = 0
    error: str | None = None
    more: bool = False


def provider_label(provider: str) -> str:
    return {"smtp": "imap", "gmail": "gmail", "microsoft365": "graph"}.get(provider, provider)


class ReplyDetector:
    def __init__(
        self,
        *,
        dsn: str,
        workspace_id: UUID,
        settings: DetectorSettings,
        credentials: CredentialSource,
        keys: KeySource,
        open_reader: ReaderOpener,
        metrics: ReplyMetrics,
    ) -> None:
        self.dsn = dsn
        self.workspace_id = workspace_id
        self.settings = settings
        self.credentials = credentials
        self.keys = keys
        self.open_reader = open_reader
        self.metrics = metrics
        self._due: dict[UUID, float] = {}
        self._failures: dict[UUID, int] = {}
        self._random = random.Random()  # noqa: S311 - jitter, not security

    # --- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set; the message in hand is recorded before returning."""
        log.info("reply detector serving workspace %s", self.workspace_id)
        conn: psycopg.Connection[Any] | None = None
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if conn is None:
                        conn = psycopg.connect(self.dsn)
                    self.run_once(conn, stop)
                    failures = 0
                    stop.wait(self._until_next_due())
                except psycopg.OperationalError as err:
                    failures += 1
                    log.warning("database unavailable (%s); retrying", type(err).__name__)
                    if conn is not None:
                        conn.close()
                    conn = None
                    stop.wait(min(30.0, 0.5 * 2**failures))
                except Exception:
                    failures += 1
                    log.exception("reply poll failed; the cursors stay where they were")
                    if conn is not None and conn.closed:
                        conn = None  # reconnect on the next round
                    elif conn is not None:
                        conn.rollback()
                    stop.wait(min(30.0, 0.5 * 2**failures))
        finally:
            if conn is not None:
                conn.close()
            log.info("reply detector stopped")

    def _until_next_due(self) -> float:
        if not self._due:
            return self.settings.poll_seconds
        wait = min(self._due.values()) - time.monotonic()
        return max(0.0, min(wait, self.settings.poll_seconds))

    def run_once(
        self,
        conn: psycopg.Connection[Any],
        stop: threading.Event | None = None,
        *,
        force: bool = False,
    ) -> list[PollResult]:
        """Poll every mailbox that is due (every mailbox with `force`), once."""
        stop = stop or threading.Event()
        ids = replies_db.readable_mailboxes(conn, self.workspace_id)
        self._due = {i: self._due.get(i, 0.0) for i in ids}
        now = time.monotonic()
        due = [i for i in ids if force or self._due[i] <= now]
        if not due:
            return []
        rows = jobs_db.mailboxes(conn, self.workspace_id, due)
        results: list[PollResult] = []
        for mailbox_id in due:
            if stop.is_set():
                break
            row = rows.get(mailbox_id)
            if row is None:
                continue
            result = self.poll(conn, row, stop)  # raises only when the database is unavailable
            results.append(result)
            self._schedule(mailbox_id, result)
        return results

    def _schedule(self, mailbox_id: UUID, result: PollResult) -> None:
        if result.error is None:
            self._failures.pop(mailbox_id, None)
            delay = 0.0 if result.more else self.settings.poll_seconds
        else:
            failures = self._failures.get(mailbox_id, 0) + 1
            self._failures[mailbox_id] = failures
            backoff = self.settings.poll_seconds * 2 ** min(failures, 16)
            delay = min(self.settings.backoff_max_seconds, backoff)
            delay *= self._random.uniform(0.5, 1.0)
        self._due[mailbox_id] = time.monotonic() + delay

    # --- one mailbox ---------------------------------------------------------------------

    def poll(
        self, conn: psycopg.Connection[Any], row: jobs_db.MailboxRow, stop: threading.Event
    ) -> PollResult:
        provider = provider_label(row.provider)
        result = PollResult(row.id)
        began = time.monotonic()
        self.metrics.polls.labels(provider).inc()
        try:
            self._poll(conn, row, stop, result)
        except psycopg.OperationalError as err:
            if not isinstance(err, psycopg.errors.ProgramLimitExceeded):
                raise  # the database is unavailable: the whole round stops, run() reconnects
            self._failed(conn, row, err, result)
        except Exception as err:
            if conn.closed or conn.broken:
                raise  # the connection is gone: not this mailbox's fault
            # A bug or a provider answer nobody expected: this mailbox's poll fails (and backs
            # off) without holding up the others.
            self._failed(conn, row, err, result)
        finally:
            self.metrics.poll_seconds.labels(provider).observe(time.monotonic() - began)
        if result.error is not None:
            self.metrics.poll_errors.labels(provider).inc()
            log.warning(
                "mailbox %s/%s: could not read inbound mail: %s; keeping its cursor, trying "
                "again later",
                row.namespace,
                row.name,
                result.error,
            )
        elif result.counts:
            c = result.counts
            log.info(
                "mailbox %s/%s: read %d: reply %d, auto_reply %d, hard_bounce %d, "
                "soft_bounce %d, unmatched %d, duplicate %d, ignored %d, unreadable %d; "
                "cancelled %d pending jobs",
                row.namespace,
                row.name,
                c.total(),
                *(c[k] for k in ReplyMetrics.KINDS),
                result.cancelled_jobs,
            )
        return result

    @staticmethod
    def _failed(
        conn: psycopg.Connection[Any],
        row: jobs_db.MailboxRow,
        err: Exception,
        result: PollResult,
    ) -> None:
        # The type only: an exception's text may quote the message or the provider's answer.
        result.error = f"unexpected {type(err).__name__}"
        log.debug("mailbox %s/%s: poll failed", row.namespace, row.name, exc_info=True)
        if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()

    def _poll(
        self,
        conn: psycopg.Connection[Any],
        row: jobs_db.MailboxRow,
        stop: threading.Event,
        result: PollResult,
    ) -> None:
        try:
            profile = profile_from_row(row)
        except MailboxSettingsError as err:
            result.error = f"mailbox settings: {err}"
            return
        cursor = replies_db.load_cursor(conn, self.workspace_id, row.id)
        try:
            reader = self._open(profile)
        except (
            CredentialError,
            crypto.CryptoError,
            KeyProviderError,
            ProviderError,
            PollUnavailable,
            ValueError,
        ) as err:
            result.error = f"opening its credentials failed: {type(err).__name__}: {err}"
            return
        try:
            finished = True
            for message in reader.messages(cursor):
                self._record(conn, profile, message, result)
                if stop.is_set():
                    finished = False
                    break
            result.more = reader.more
            final = reader.next_cursor
            if finished and final is not None and final != cursor:
                replies_db.save_cursor(conn, self.workspace_id, row.id, final)
        except PollUnavailable as err:
            result.error = str(err)
        finally:
            reader.close()
            del reader

    def _open(self, profile: MailboxProfile) -> InboxReader:
        """Credentials are opened here, right before reading, and live only in the reader."""
        return open_for_use(profile, self.credentials, self.keys, self.open_reader)

    def _record(
        self,
        conn: psycopg.Connection[Any],
        profile: MailboxProfile,
        message: InboundMessage,
        result: PollResult,
    ) -> None:
        try:
            classified = classify(message.raw)
        except Exception as err:
            # One message the parser can't take must not stall the mailbox forever.
            log.warning(
                "mailbox %s: %s could not be classified (%s); skipped",
                profile.ref,
                message.ref,
                type(err).__name__,
            )
            self._count(result, "unreadable")
            return
        if classified is None:
            self._count(result, "ignored")
            return
        try:
            recorded = replies_db.record(
                conn,
                self.workspace_id,
                profile.id,
                message_id=classified.message_id,
                kind=classified.kind,
                bounce_type=classified.bounce_type,
                candidates=list(classified.candidates),
                received_at=message.received_at or classified.date,
                failed_recipients=list(classified.failed_recipients),
                cursor=message.cursor,
            )
        except MESSAGE_DB_ERRORS as err:
            # The database can't take something of this message (workspace_session rolled the
            # transaction back). Skip it, and move the cursor past it on its own, or every poll
            # would stop at the same message.
            log.warning(
                "mailbox %s: %s could not be recorded (%s); skipped",
                profile.ref,
                message.ref,
                type(err).__name__,
            )
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.rollback()
            if message.cursor is not None:
                replies_db.save_cursor(conn, self.workspace_id, profile.id, message.cursor)
            self._count(result, "unreadable")
            return
        self._count(result, recorded.outcome)
        if recorded.cancelled_jobs:
            result.cancelled_jobs += recorded.cancelled_jobs
            self.metrics.cancelled_jobs.inc(recorded.cancelled_jobs)
        if recorded.outcome not in ("unmatched", "duplicate"):
            log.info(
                "mailbox %s: %s for lead %s (%s); %d pending jobs cancelled",
                profile.ref,
                recorded.outcome,
                recorded.lead_id,
                classified.reason,
                recorded.cancelled_jobs,
            )

    def _count(self, result: PollResult, kind: str) -> None:
        result.counts[kind] += 1
        self.metrics.inbound.labels(kind).inc()
