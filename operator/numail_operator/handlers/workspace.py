"""Kopf handlers for Workspace: parse, delegate to reconcile.workspace, report. Nothing else."""

from __future__ import annotations

import time
from typing import Any

import kopf

from numail.api import GROUP, VERSION
from numail_operator import k8s, metrics
from numail_operator.handlers.runtime import runtime
from numail_operator.reconcile.workspace import (
    Gathered,
    MailboxesRemain,
    finalize_workspace,
    reconcile_workspace,
)
from numail_operator.settings import Settings

_INTERVAL = float(Settings.from_env().reconcile_interval)


def _post(body: Any, events: list[tuple[str, str, str]]) -> None:
    for kind, reason, message in events:
        # kopf.event, not kopf.info: posting.level only silences kopf's own chatter.
        kopf.event(body, type=kind, reason=reason, message=message)


@kopf.index(GROUP, VERSION, "mailboxes")
def mailboxes_by_namespace(namespace: str | None, name: str | None, **_: Any) -> dict[str, str]:
    return {namespace or "": name or ""}


@kopf.index(GROUP, VERSION, "mailboxes")
def client_secrets_by_namespace(namespace: str | None, spec: kopf.Spec, **_: Any) -> dict[str, str]:
    """The OAuth client secret each Mailbox names: the worker Roles grant `get` on them."""
    ref = (spec.get("oauth") or {}).get("clientSecretRef") or {}
    return {namespace or "": str(ref["name"])} if ref.get("name") else {}


@kopf.index(GROUP, VERSION, "keyproviders")
def key_providers_by_name(name: str | None, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return {name or "": dict(body)}


def _gathered(
    body: kopf.Body,
    mailboxes: kopf.Index[str, str],
    client_secrets: kopf.Index[str, str],
    providers: kopf.Index[str, Any],
) -> Gathered:
    """What the watches already know, so a reconcile doesn't re-read it from the apiserver."""
    namespace = f"ws-{body['metadata']['name']}"
    wanted = (body.get("spec") or {}).get("keyProvider") or "default"
    found = list(providers.get(wanted, []))
    return Gathered(
        mailboxes=sorted(mailboxes.get(namespace, [])),
        client_secrets=sorted(set(client_secrets.get(namespace, []))),
        key_providers={wanted: found[-1] if found else None},
    )


def _reconcile(body: kopf.Body, gathered: Gathered | None = None) -> None:
    rt = runtime()
    started = time.monotonic()
    outcome = "error"
    try:
        result = reconcile_workspace(
            dict(body), rt.clients, rt.applier, rt.providers, rt.settings, cache=gathered
        )
        _post(body, result.events)
        name = body["metadata"]["name"]
        if result.status is not None:
            k8s.patch_status(rt.clients, "workspaces", name, result.status)
            ready = next(
                (c["status"] for c in result.status["conditions"] if c["type"] == "Ready"), None
            )
            metrics.record_workspace_ready(name, ready)
        if result.retry_after is not None:
            outcome = "retry"
            raise kopf.TemporaryError(
                "workspace not ready; see its conditions", delay=result.retry_after
            )
        outcome = "ok"
    finally:
        metrics.RECONCILES.labels("Workspace", outcome).inc()
        metrics.RECONCILE_SECONDS.labels("Workspace").observe(time.monotonic() - started)


@kopf.on.resume(GROUP, VERSION, "workspaces")
@kopf.on.create(GROUP, VERSION, "workspaces")
@kopf.on.update(GROUP, VERSION, "workspaces")
def workspace_changed(body: kopf.Body, **kwargs: Any) -> None:
    # Kopf passes each index by its function's name.
    gathered = _gathered(
        body,
        kwargs["mailboxes_by_namespace"],
        kwargs["client_secrets_by_namespace"],
        kwargs["key_providers_by_name"],
    )
    _reconcile(body, gathered)


@kopf.timer(GROUP, VERSION, "workspaces", interval=_INTERVAL, initial_delay=_INTERVAL)
def workspace_resync(body: kopf.Body, **_: Any) -> None:
    _reconcile(body)  # the periodic pass reads everything afresh, in case a watch missed it


@kopf.on.delete(GROUP, VERSION, "workspaces")
def workspace_deleted(body: kopf.Body, **_: Any) -> None:
    rt = runtime()
    try:
        _post(body, finalize_workspace(dict(body), rt.clients, rt.settings))
    except MailboxesRemain as waiting:
        raise kopf.TemporaryError(str(waiting), delay=3) from None
    metrics.record_workspace_ready(body["metadata"]["name"], None)
