"""Kopf handlers for Mailbox and its intake Secrets: parse, delegate to reconcile.mailbox, report.

Intake Secrets labelled `numail.ai/intake: "true"` are watched, so a Secret written after its
Mailbox (or written again, to rotate the credential) is sealed at once: the watch notes the
Secret's version in an annotation on the Mailbox, which makes Kopf run the Mailbox's update
handler, with its retries and backoff. An unlabelled one is found on the Mailbox's next change
or resync. Passes over one Mailbox are serialised here, because the resync timer can run beside
Kopf's change handlers.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import kopf

from numail.api import GROUP, VERSION
from numail_operator import k8s, metrics
from numail_operator.build.mailbox import ANNOTATION_INTAKE_SEEN, LABEL_INTAKE
from numail_operator.handlers.runtime import runtime
from numail_operator.reconcile.mailbox import (
    MailboxOutcome,
    finalize_mailbox,
    reconcile_mailbox,
)
from numail_operator.settings import Settings

_INTERVAL = float(Settings.from_env().reconcile_interval)
_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}


def _lock(body: dict[str, Any]) -> threading.Lock:
    uid = str(body["metadata"].get("uid", ""))
    with _guard:
        return _locks.setdefault(uid, threading.Lock())


def _post(body: Any, events: list[tuple[str, str, str]]) -> None:
    for kind, reason, message in events:
        kopf.event(body, type=kind, reason=reason, message=message)


def _reconcile(body: dict[str, Any], attempt: int) -> MailboxOutcome:
    """Re-read the Mailbox under its lock, so a pass sees the status the previous one wrote."""
    rt = runtime()
    started = time.monotonic()
    outcome = "error"
    meta = body["metadata"]
    try:
        with _lock(body):
            fresh = k8s.get_mailbox(rt.clients, meta["namespace"], meta["name"])
            if (
                fresh is None
                or fresh["metadata"].get("uid") != meta.get("uid")
                or fresh["metadata"].get("deletionTimestamp")
            ):
                outcome = "gone"
                return MailboxOutcome(None)
            result = reconcile_mailbox(
                fresh, rt.clients, rt.providers, rt.settings, attempt=attempt
            )
            if result.status is not None:
                k8s.patch_status(
                    rt.clients, "mailboxes", meta["name"], result.status, meta["namespace"]
                )
        _post(fresh, result.events)
        outcome = "retry" if result.retry_after is not None else "ok"
        return result
    finally:
        metrics.RECONCILES.labels("Mailbox", outcome).inc()
        metrics.RECONCILE_SECONDS.labels("Mailbox").observe(time.monotonic() - started)


@kopf.on.resume(GROUP, VERSION, "mailboxes")
@kopf.on.create(GROUP, VERSION, "mailboxes")
@kopf.on.update(GROUP, VERSION, "mailboxes")
def mailbox_changed(body: kopf.Body, retry: int, **_: Any) -> None:
    result = _reconcile(dict(body), retry)
    if result.retry_after is not None:
        raise kopf.TemporaryError(
            f"mailbox not ready ({result.retry_reason}); see its conditions",
            delay=result.retry_after,
        )


@kopf.timer(GROUP, VERSION, "mailboxes", interval=_INTERVAL, initial_delay=_INTERVAL)
def mailbox_resync(body: kopf.Body, **_: Any) -> None:
    _reconcile(dict(body), 0)  # a transient failure here waits for the next interval


@kopf.on.delete(GROUP, VERSION, "mailboxes")
def mailbox_deleted(body: kopf.Body, retry: int, **_: Any) -> None:
    rt = runtime()
    data = dict(body)
    with _lock(data):
        result = finalize_mailbox(data, rt.clients, rt.providers, rt.settings, attempt=retry)
    _post(data, result.events)
    if result.retry_after is not None:
        raise kopf.TemporaryError(
            f"disconnect waits ({result.retry_reason})", delay=result.retry_after
        )
    with _guard:
        _locks.pop(str(data["metadata"].get("uid", "")), None)


@kopf.on.event("", "v1", "secrets", labels={LABEL_INTAKE: "true"})
def intake_secret_event(event: kopf.RawEvent, **_: Any) -> None:
    """An intake Secret was written: nudge every Mailbox of its namespace that names it."""
    if event["type"] == "DELETED":
        return
    meta = event["object"].get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    seen = f"{meta.get('uid', '')}/{meta.get('resourceVersion', '')}"
    rt = runtime()
    for mailbox in k8s.list_mailboxes(rt.clients, namespace):
        mailbox_meta = mailbox["metadata"]
        ref = ((mailbox.get("spec") or {}).get("credentials") or {}).get("secretRef") or {}
        if ref.get("name") != name or mailbox_meta.get("deletionTimestamp"):
            continue
        if (mailbox_meta.get("annotations") or {}).get(ANNOTATION_INTAKE_SEEN) != seen:
            k8s.annotate_mailbox(
                rt.clients, namespace, mailbox_meta["name"], {ANNOTATION_INTAKE_SEEN: seen}
            )
