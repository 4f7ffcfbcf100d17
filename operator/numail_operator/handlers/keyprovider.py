"""Kopf handlers for KeyProvider: check health on change and every 30 seconds."""

from __future__ import annotations

from typing import Any

import kopf

from numail.api import GROUP, VERSION
from numail_operator import k8s, metrics
from numail_operator.handlers.runtime import runtime
from numail_operator.reconcile.keyprovider import reconcile_key_provider


def _check(body: kopf.Body) -> None:
    rt = runtime()
    status = reconcile_key_provider(dict(body), rt.providers)
    if status is not None:
        k8s.patch_status(rt.clients, "keyproviders", body["metadata"]["name"], status)
        if not status["healthy"]:
            kopf.event(
                body, type="Warning", reason="Unhealthy", message=status["conditions"][0]["message"]
            )
    metrics.RECONCILES.labels("KeyProvider", "ok").inc()


@kopf.on.resume(GROUP, VERSION, "keyproviders")
@kopf.on.create(GROUP, VERSION, "keyproviders")
@kopf.on.update(GROUP, VERSION, "keyproviders")
def key_provider_changed(body: kopf.Body, **_: Any) -> None:
    _check(body)


@kopf.timer(GROUP, VERSION, "keyproviders", interval=30, initial_delay=30)
def key_provider_health(body: kopf.Body, **_: Any) -> None:
    _check(body)
