"""The send loop: claim a batch, settle unknown outcomes, open credentials, send, record.

One engine serves one workspace with three connections: the main loop's, a LISTEN connection
that wakes it when jobs are enqueued (it also polls, so a lost notification only delays), and
the heartbeat thread's, which renews this worker's lease (one lease covers every job it holds,
migration 0005), hands back jobs it no longer has in hand, and reports queue depth.

What makes a send safe to retry or not is decided in SQL (numail.db.jobs, migration 0004) and
in the senders (the transient/unknown line). This module's own duties are three: hand a job
to a sender only after the database moved it to `sending` for this worker; never hand one over
once this worker may have lost its lease (the local lease deadline is a fence, kept with a
margin, because another worker may take the job over when the lease expires); and open a
mailbox's credentials only for the batch at hand, dropping them when the batch is done.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg

from numail import crypto
from numail.db import jobs as jobs_db
from numail.keys import KeyProviderError
from numail.providers.base import ProviderError
from numail_workers.credentials import CredentialError, CredentialSource, KeySource, open_for_use
from numail_workers.failpoints import failpoint
from numail_workers.mailboxes import MailboxProfile, MailboxSettingsError, profile_from_row
from numail_workers.message import OutgoingMessage, render
from numail_workers.metrics import SendMetrics
from numail_workers.senders import MailboxSession, SendResult, SessionOpener, SettleUnavailable

log = logging.getLogger("numail.send")

PROFILE_TTL = 60.0


@dataclass(frozen=True)
class EngineSettings:
    batch_size: int = 50
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 15.0
    # How long an attempt whose outcome is unknown waits before the provider is asked: long
    # enough for a worker that was only slow to finish, and for the provider to file its copy.
    settle_delay_seconds: float = 120.0
    poll_seconds: float = 5.0
    max_attempts: int = 8
    backoff_seconds: float = 30.0
    backoff_max_seconds: float = 3600.0
    unsubscribe_url: str | None = None
    depth_interval_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError("the heartbeat must beat at least twice per lease")
        if self.batch_size < 1 or self.max_attempts < 1:
            raise ValueError("batch_size and max_attempts must be at least 1")

    @property
    def fence_margin(self) -> float:
        """Stop handing messages over this long before the lease runs out."""
        return min(self.lease_seconds * 0.25, 10.0)


def default_owner() -> str:
    """Unique per process run, so a restarted worker never mistakes old leases for its own."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


class SendEngine:
    def __init__(
        self,
        *,
        dsn: str,
        workspace_id: UUID,
        settings: EngineSettings,
        credentials: CredentialSource,
        keys: KeySource,
        open_session: SessionOpener,
        metrics: SendMetrics,
        owner: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.workspace_id = workspace_id
        self.settings = settings
        self.credentials = credentials
        self.keys = keys
        self.open_session = open_session
        self.metrics = metrics
        self.owner = owner or default_owner()
        self._held: set[UUID] = set()
        self._held_lock = threading.Lock()
        # Held across a claim and the update of _held, and across a heartbeat: the heartbeat
        # hands back the jobs the database lists for this worker that are not in _held, so it
        # must never run between a claim's commit and _held learning of the new jobs.
        self._claim_lock = threading.Lock()
        self._lease_deadline = 0.0
        self._profiles: dict[UUID, tuple[float, MailboxProfile | MailboxSettingsError]] = {}
        self._random = random.Random()  # noqa: S311 - jitter, not security

    # --- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Send until `stop` is set, then finish the message in hand, release the rest and
        return."""
        log.info("send worker %s serving workspace %s", self.owner, self.workspace_id)
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat_loop, args=(beat_stop,), name="lease-heartbeat", daemon=True
        )
        beat.start()
        conn: psycopg.Connection[Any] | None = None
        listen: psycopg.Connection[Any] | None = None
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if conn is None:
                        conn = psycopg.connect(self.dsn)
                    if listen is None:
                        listen = psycopg.connect(self.dsn, autocommit=True)
                        listen.execute(f'LISTEN "{jobs_db.notify_channel(self.workspace_id)}"')
                    if not self.run_once(conn, stop):
                        self._idle(conn, listen, stop)
                    failures = 0
                except psycopg.OperationalError as err:
                    failures += 1
                    log.warning("database unavailable (%s); retrying", type(err).__name__)
                    for c in (conn, listen):
                        if c is not None:
                            c.close()
                    conn = listen = None
                    stop.wait(min(30.0, 0.5 * 2**failures))
                except Exception:
                    failures += 1
                    log.exception("send batch failed; its leases expire and others take over")
                    if conn is not None and not conn.closed:
                        conn.rollback()
                    stop.wait(min(30.0, 0.5 * 2**failures))
        finally:
            beat_stop.set()
            beat.join(5)
            self._end_lease(conn)
            for c in (conn, listen):
                if c is not None:
                    c.close()
            log.info("send worker %s stopped", self.owner)

    def _end_lease(self, conn: psycopg.Connection[Any] | None) -> None:
        """Give up this worker's lease at once, so nobody waits for it to run out."""
        if conn is None or conn.closed:
            return
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            jobs_db.worker_stopped(
                conn,
                self.workspace_id,
                self.owner,
                settle_delay_seconds=self.settings.settle_delay_seconds,
            )
        except psycopg.Error as err:
            log.warning("could not end the lease (%s); it runs out by itself", type(err).__name__)

    def run_once(self, conn: psycopg.Connection[Any], stop: threading.Event) -> bool:
        """Claim and process one batch; False when there was nothing to claim.

        A batch costs three transactions whatever its size and however many mailboxes it
        spans: the claim, the move of every job to `sending`, and the record of every outcome.
        """
        started = time.monotonic()
        with self._claim_lock:
            claimed = jobs_db.claim(
                conn,
                self.workspace_id,
                self.owner,
                self.settings.batch_size,
                lease_seconds=self.settings.lease_seconds,
                settle_delay_seconds=self.settings.settle_delay_seconds,
            )
            work = [j for j in claimed if j.state != "suppressed"]
            with self._held_lock:
                self._held.update(j.job_id for j in work)
        self.metrics.claim_seconds.observe(time.monotonic() - started)
        if not claimed:
            return False
        self._extend_lease(started)
        failpoint("send.after-claim")
        suppressed = len(claimed) - len(work)
        if suppressed:
            self.metrics.suppressed.inc(suppressed)
        try:
            outcomes = self._process(conn, work, stop)
            applied = jobs_db.finish(conn, self.workspace_id, self.owner, outcomes)
            self._count(outcomes, applied)
        finally:
            with self._held_lock:
                self._held.difference_update(j.job_id for j in work)
        return True

    def _idle(
        self,
        conn: psycopg.Connection[Any],
        listen: psycopg.Connection[Any],
        stop: threading.Event,
    ) -> None:
        """Wait for a NOTIFY, the next due job or the poll interval, whichever comes first."""
        timeout = self.settings.poll_seconds
        due = jobs_db.next_due(conn, self.workspace_id)
        if due is not None:
            wait = (due - datetime.now(UTC)).total_seconds()
            if 0 < wait < timeout:
                timeout = wait + 0.01
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for _ in listen.notifies(timeout=min(remaining, 0.5), stop_after=1):
                return

    def _process(
        self, conn: psycopg.Connection[Any], work: list[jobs_db.ClaimedJob], stop: threading.Event
    ) -> list[jobs_db.Outcome]:
        """Open each mailbox of the batch, settle its unknown jobs, start every attempt at once,
        send mailbox by mailbox, and close every session (dropping the credentials)."""
        groups: dict[UUID, list[jobs_db.ClaimedJob]] = defaultdict(list)
        for job in work:
            groups[job.mailbox_id].append(job)
        self._load_profiles(conn, list(groups))
        outcomes: list[jobs_db.Outcome] = []
        sessions: list[MailboxSession] = []
        to_send: list[tuple[jobs_db.ClaimedJob, MailboxProfile, MailboxSession]] = []
        try:
            for mailbox_id, jobs in groups.items():
                if stop.is_set():
                    outcomes += [jobs_db.Outcome(j.job_id, "release") for j in jobs]
                    continue
                opened = self._open_group(mailbox_id, jobs, outcomes)
                if opened is None:
                    continue
                profile, session = opened
                sessions.append(session)
                sendable = self._settle(session, profile, jobs, stop, outcomes)
                to_send += [(j, profile, session) for j in sendable]
            if not to_send:
                return outcomes
            if stop.is_set():
                return outcomes + [jobs_db.Outcome(j.job_id, "release") for j, _, _ in to_send]
            began = time.monotonic()
            started = jobs_db.start_attempts(
                conn,
                self.workspace_id,
                self.owner,
                [j.job_id for j, _, _ in to_send],
                lease_seconds=self.settings.lease_seconds,
            )
            if started.attempts:
                self._extend_lease(began)
            if started.suppressed:
                self.metrics.suppressed.inc(len(started.suppressed))
            tally: dict[str, Counter[str]] = defaultdict(Counter)
            for job, profile, session in to_send:
                attempt = started.attempts.get(job.job_id)
                if attempt is None:
                    continue  # suppressed since the claim, or no longer ours: never send it
                if stop.is_set() or not self._lease_held():
                    outcomes.append(
                        jobs_db.Outcome(job.job_id, "release", detail="not attempted: stopping")
                    )
                    continue
                result = session.send(self._message(profile, job, attempt))
                outcome = self._outcome(job, attempt, result)
                outcomes.append(outcome)
                tally[profile.ref][outcome.kind] += 1
                if outcome.kind != "sent":
                    log.info(
                        "%s: %s %s: %s", profile.ref, outcome.kind, job.message_id, result.detail
                    )
            for ref, counts in tally.items():
                log.info(
                    "%s: sent %d, retry %d, failed %d, unknown %d",
                    ref,
                    counts["sent"],
                    counts["retry"],
                    counts["failed"],
                    counts["unknown"],
                )
            return outcomes
        finally:
            for session in sessions:
                session.close()
            del sessions, to_send

    def _open_group(
        self,
        mailbox_id: UUID,
        jobs: list[jobs_db.ClaimedJob],
        outcomes: list[jobs_db.Outcome],
    ) -> tuple[MailboxProfile, MailboxSession] | None:
        profile = self._profile(mailbox_id)
        if isinstance(profile, MailboxSettingsError):
            log.error("mailbox %s can't send: %s", mailbox_id, profile)
            outcomes += [self._not_opened(j, f"mailbox settings: {profile}") for j in jobs]
            return None
        try:
            return profile, self._open(profile)
        except (
            CredentialError,
            crypto.CryptoError,
            KeyProviderError,
            ProviderError,
            ValueError,
        ) as err:
            log.warning("mailbox %s: could not open its credentials: %s", profile.ref, err)
            outcomes += [self._not_opened(j, f"{type(err).__name__}: {err}") for j in jobs]
            return None

    def _open(self, profile: MailboxProfile) -> MailboxSession:
        """Credentials are opened here, right before use, and live only in the session."""
        return open_for_use(profile, self.credentials, self.keys, self.open_session)

    def _settle(
        self,
        session: MailboxSession,
        profile: MailboxProfile,
        jobs: list[jobs_db.ClaimedJob],
        stop: threading.Event,
        outcomes: list[jobs_db.Outcome],
    ) -> list[jobs_db.ClaimedJob]:
        """Ask the provider about every unknown job; returns what may be sent now."""
        sendable = [j for j in jobs if j.state == "claimed"]
        for job in (j for j in jobs if j.state == "unknown"):
            if stop.is_set():
                outcomes.append(jobs_db.Outcome(job.job_id, "release"))
                continue
            try:
                found = session.was_sent(job.message_id)
            except SettleUnavailable as err:
                self.metrics.settled.labels("unreachable").inc()
                log.warning("%s: can't settle %s yet: %s", profile.ref, job.message_id, err)
                outcomes.append(
                    jobs_db.Outcome(
                        job.job_id,
                        "unsettled",
                        self._jitter(self.settings.settle_delay_seconds),
                        detail=str(err),
                    )
                )
                continue
            self.metrics.settled.labels("found" if found else "not_found").inc()
            log.info(
                "%s: settled %s: %s",
                profile.ref,
                job.message_id,
                "the provider has it, not sending again" if found else "not sent, sending",
            )
            if found:
                outcomes.append(jobs_db.Outcome(job.job_id, "found"))
            else:
                sendable.append(job)
        return sendable

    def _message(
        self, profile: MailboxProfile, job: jobs_db.ClaimedJob, attempt: int
    ) -> OutgoingMessage:
        fields = {
            "first_name": job.first_name,
            "last_name": job.last_name,
            "company": job.company,
            "email": job.recipient,
        }
        return OutgoingMessage(
            job_id=job.job_id,
            message_id=job.message_id,
            sender=profile.address,
            recipient=job.recipient,
            subject=render(job.subject, fields),
            body=render(job.body, fields),
            sender_name=profile.display_name,
            unsubscribe_url=self.settings.unsubscribe_url,
            attempt=attempt,
        )

    def _outcome(
        self, job: jobs_db.ClaimedJob, attempt: int, result: SendResult
    ) -> jobs_db.Outcome:
        if result.kind == "sent":
            return jobs_db.Outcome(
                job.job_id,
                "sent",
                reply_code=result.reply_code,
                provider_message_id=result.provider_message_id,
            )
        if result.kind == "unknown":
            return jobs_db.Outcome(
                job.job_id,
                "unknown",
                self._jitter(self.settings.settle_delay_seconds),
                detail=result.detail,
            )
        if result.kind == "transient" and attempt < self.settings.max_attempts:
            return jobs_db.Outcome(
                job.job_id,
                "retry",
                self.backoff(attempt),
                reply_code=result.reply_code,
                detail=result.detail,
            )
        detail = result.detail
        if result.kind == "transient":
            detail = f"gave up after {attempt} attempts: {detail}"
        return jobs_db.Outcome(
            job.job_id,
            "failed",
            reply_code=result.reply_code,
            detail=detail,
            hard_bounce=result.hard_bounce,
        )

    def _not_opened(self, job: jobs_db.ClaimedJob, detail: str) -> jobs_db.Outcome:
        """Nothing was sent: wait and try again. An unknown job stays unknown."""
        if job.state == "unknown":
            return jobs_db.Outcome(
                job.job_id,
                "unsettled",
                self._jitter(self.settings.settle_delay_seconds),
                detail=detail,
            )
        return jobs_db.Outcome(job.job_id, "retry", self.backoff(job.attempts + 1), detail=detail)

    def backoff(self, attempt: int) -> float:
        """Exponential from backoff_seconds, capped, with jitter (half to all of the step)."""
        step = min(
            self.settings.backoff_max_seconds,
            self.settings.backoff_seconds * 2 ** min(attempt - 1, 30),
        )
        return self._jitter(step)

    def _jitter(self, seconds: float) -> float:
        return seconds * self._random.uniform(0.5, 1.0)

    def _count(self, outcomes: Sequence[jobs_db.Outcome], applied: dict[UUID, str]) -> None:
        for outcome in outcomes:
            if applied.get(outcome.job_id) != outcome.kind:
                continue
            if outcome.kind == "sent":
                self.metrics.sent.inc()
            elif outcome.kind == "failed":
                self.metrics.failed.inc()
            elif outcome.kind == "unknown":
                self.metrics.unknown.inc()
            elif outcome.kind == "retry":
                self.metrics.retries.inc()

    # --- mailboxes -------------------------------------------------------------------------

    def _load_profiles(self, conn: psycopg.Connection[Any], ids: list[UUID]) -> None:
        now = time.monotonic()
        missing = [i for i in ids if i not in self._profiles or self._profiles[i][0] < now]
        if not missing:
            return
        rows = jobs_db.mailboxes(conn, self.workspace_id, missing)
        for mailbox_id in missing:
            row = rows.get(mailbox_id)
            entry: MailboxProfile | MailboxSettingsError
            if row is None:
                entry = MailboxSettingsError("the mailbox is not in this workspace")
            else:
                try:
                    entry = profile_from_row(row)
                except MailboxSettingsError as err:
                    entry = err
            self._profiles[mailbox_id] = (now + PROFILE_TTL, entry)

    def _profile(self, mailbox_id: UUID) -> MailboxProfile | MailboxSettingsError:
        return self._profiles[mailbox_id][1]

    # --- leases ----------------------------------------------------------------------------

    def _extend_lease(self, started: float) -> None:
        deadline = started + self.settings.lease_seconds
        with self._held_lock:
            self._lease_deadline = max(self._lease_deadline, deadline)

    def _lose_lease(self) -> None:
        with self._held_lock:
            self._lease_deadline = 0.0

    def _lease_held(self) -> bool:
        with self._held_lock:
            deadline = self._lease_deadline
        return time.monotonic() < deadline - self.settings.fence_margin

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        conn: psycopg.Connection[Any] | None = None
        next_depth = 0.0
        try:
            while not stop.wait(self.settings.heartbeat_seconds):
                try:
                    if conn is None:
                        conn = psycopg.connect(self.dsn)
                    began = time.monotonic()
                    with self._claim_lock:
                        with self._held_lock:
                            held = list(self._held)
                        kept = jobs_db.heartbeat(
                            conn,
                            self.workspace_id,
                            self.owner,
                            held,
                            lease_seconds=self.settings.lease_seconds,
                            settle_delay_seconds=self.settings.settle_delay_seconds,
                        )
                    if kept >= 0:
                        self._extend_lease(began)
                    elif held:
                        log.warning("lease lost: another worker took back the jobs in hand")
                        self._lose_lease()
                    if time.monotonic() >= next_depth:
                        self.metrics.set_depth(jobs_db.queue_depth(conn, self.workspace_id))
                        next_depth = time.monotonic() + self.settings.depth_interval_seconds
                except psycopg.Error as err:
                    log.warning("heartbeat failed (%s); leases may lapse", type(err).__name__)
                    if conn is not None:
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
