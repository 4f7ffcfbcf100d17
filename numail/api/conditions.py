"""Status conditions kept the cert-manager way: stable transition times, change detection."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from numail.api.models import Condition, ConditionStatus


def get_condition(conditions: Sequence[Condition], type: str) -> Condition | None:
    """The condition of this type, or None: reconcilers branch on absence as 'not yet known'."""
    return next((condition for condition in conditions if condition.type == type), None)


def set_condition(
    conditions: Sequence[Condition],
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    observed_generation: int,
    now: datetime,
) -> tuple[list[Condition], bool]:
    """Return the list with this condition set, and whether anything a reader sees changed.

    lastTransitionTime moves only when the status flips, so `kubectl describe` tells how long a
    resource has been Ready (or not) rather than when it was last reconciled; `changed` lets the
    reconciler skip a status patch, and the watch event it would cause, when nothing changed.
    The input is left untouched and the other conditions keep their order.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware; use datetime.now(UTC)")
    # metav1.Time has second precision; sub-second times would differ after a round trip.
    now = now.astimezone(UTC).replace(microsecond=0)
    existing = get_condition(conditions, type)
    if existing is None or existing.status != status:
        last_transition_time = now
    else:
        last_transition_time = existing.last_transition_time
    updated = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=last_transition_time,
        observed_generation=observed_generation,
    )
    if existing is None:
        return [*conditions, updated], True
    result = [updated if condition is existing else condition for condition in conditions]
    return result, updated != existing
