"""KeyProvider reconciler: health and current key id into status, as KMS v2's Status reports."""

from __future__ import annotations

import datetime as dt
from typing import Any

from numail.api.conditions import set_condition
from numail.api.models import Condition
from numail.keys import KeyProviderError
from numail_operator.reconcile.keys import KeyNotReady, ProviderDirectory


def reconcile_key_provider(
    body: dict[str, Any], providers: ProviderDirectory, now: dt.datetime | None = None
) -> dict[str, Any] | None:
    """The new status, or None when health, key id and conditions are unchanged."""
    now = now or dt.datetime.now(dt.UTC)
    generation = int(body["metadata"].get("generation", 1))
    status = dict(body.get("status") or {})
    try:
        health = providers.build(body).status()
        healthy, key_id, reason, message = health.healthy, health.key_id, "Healthy", "reachable"
        if not healthy:
            reason, message = "Unhealthy", health.message or "the provider reports unhealthy"
    except KeyNotReady as err:
        healthy, key_id, reason, message = False, "", err.reason, err.message
    except KeyProviderError as err:
        healthy, key_id, reason, message = False, "", "Unreachable", str(err)
    existing = []
    for raw in status.get("conditions") or []:
        try:
            existing.append(Condition.model_validate(raw))
        except ValueError:
            continue
    conditions, changed = set_condition(
        existing,
        "Ready",
        "True" if healthy else "False",
        reason,
        message,
        generation,
        now,
    )
    if (
        not changed
        and status.get("healthy") == healthy
        and status.get("keyId", "") == key_id
        and status.get("observedGeneration") == generation
    ):
        return None
    return {
        **status,
        "healthy": healthy,
        "keyId": key_id,
        "lastChecked": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "conditions": [
            c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions
        ],
        "observedGeneration": generation,
    }
