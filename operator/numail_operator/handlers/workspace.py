"""Kopf handlers for Workspace: parse, delegate to reconcile.workspace, report. Nothing else."""

from __future__ import annotations

import time
from typing import Any

import kopf

from numail.api import GROUP, VERSION
from numail_operator import k8s, metrics
from numail_operator.handlers.runtime import runtime
from numail_operator.reconcile.workspace import finalize_workspace, reconcile_workspace
from numail_operator.settings import Settings

_INTERVAL = float(Settings.from_env().reconcile_interval)


def _post(body: Any, events: list[tuple[str, str, str]]) -> None:
    for kind, reason, message in events:
        (kopf.warn if kind == "Warning" else kopf.info)(body, reason=reason, message=message)


def _reconcile(body: kopf.Body) -> None:
    rt = runtime()
    started = time.monotonic()
    outcome = "error"
    try:
        result = reconcile_workspace(dict(body), rt.clients, rt.applier, rt.providers, rt.settings)
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
def workspace_changed(body: kopf.Body, **_: Any) -> None:
    _reconcile(body)


@kopf.timer(GROUP, VERSION, "workspaces", interval=_INTERVAL, initial_delay=_INTERVAL)
def workspace_resync(body: kopf.Body, **_: Any) -> None:
    _reconcile(body)


@kopf.on.delete(GROUP, VERSION, "workspaces")
def workspace_deleted(body: kopf.Body, **_: Any) -> None:
    rt = runtime()
    _post(body, finalize_workspace(dict(body), rt.clients))
    metrics.record_workspace_ready(body["metadata"]["name"], None)
