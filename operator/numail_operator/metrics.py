"""Operator metrics (prometheus-client): reconciles by kind and outcome, durations, conditions."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "numail_reconciles_total", "Reconciles by kind and outcome", ["kind", "outcome"]
)
RECONCILE_SECONDS = Histogram("numail_reconcile_seconds", "Reconcile duration", ["kind"])
WORKSPACES = Gauge("numail_workspaces", "Workspaces by Ready condition status", ["ready"])
DRIFT_REPAIRS = Counter("numail_drift_repairs_total", "Children re-applied after drift", ["kind"])

_lock = threading.Lock()
_ready: dict[str, str] = {}


def record_workspace_ready(name: str, status: str | None) -> None:
    with _lock:
        if status is None:
            _ready.pop(name, None)
        else:
            _ready[name] = status
        counts = {"True": 0, "False": 0, "Unknown": 0}
        for value in _ready.values():
            counts[value] = counts.get(value, 0) + 1
    for key, count in counts.items():
        WORKSPACES.labels(key).set(count)
