"""set_condition and get_condition: transition times, change detection and order."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from numail.api.conditions import get_condition, set_condition
from numail.api.models import Condition, ConditionStatus

EARLIER = datetime(2026, 1, 1, 9, 0, 0, tzinfo=UTC)
NOW = datetime(2026, 1, 1, 10, 30, 0, tzinfo=UTC)


def condition(
    type: str = "Ready",
    status: ConditionStatus = "True",
    reason: str = "Reconciled",
    message: str = "all good",
    generation: int = 3,
    at: datetime = EARLIER,
) -> Condition:
    return Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=at,
    )


@dataclass(frozen=True)
class SetCase:
    before: list[Condition]
    status: ConditionStatus = "True"
    reason: str = "Reconciled"
    message: str = "all good"
    generation: int = 3
    changed: bool = True
    transition: datetime = NOW
    after_types: list[str] = field(default_factory=lambda: ["Ready"])


SET_CASES = {
    "a condition of a new type is appended, with the transition time now": SetCase(
        before=[], changed=True, transition=NOW
    ),
    "setting the same values again changes nothing and keeps the transition time": SetCase(
        before=[condition()], changed=False, transition=EARLIER
    ),
    "a new reason under the same status is a change that keeps the transition time": SetCase(
        before=[condition()], reason="KeyRotated", changed=True, transition=EARLIER
    ),
    "a new message under the same status is a change that keeps the transition time": SetCase(
        before=[condition()], message="rewrapped", changed=True, transition=EARLIER
    ),
    "a newer observedGeneration alone is a change that keeps the transition time": SetCase(
        before=[condition()], generation=4, changed=True, transition=EARLIER
    ),
    "a status flip from True to False moves the transition time to now": SetCase(
        before=[condition()], status="False", reason="KeyUnavailable", transition=NOW
    ),
    "a status flip from Unknown to True moves the transition time to now": SetCase(
        before=[condition(status="Unknown", reason="Pending")], transition=NOW
    ),
    "the other conditions keep their place around the one that changes": SetCase(
        before=[condition(type="Verified"), condition(), condition(type="Sealed")],
        status="False",
        reason="KeyUnavailable",
        transition=NOW,
        after_types=["Verified", "Ready", "Sealed"],
    ),
    "a new type goes after the existing conditions": SetCase(
        before=[condition(type="Verified")],
        transition=NOW,
        after_types=["Verified", "Ready"],
    ),
}


@pytest.mark.parametrize("case", SET_CASES.values(), ids=SET_CASES.keys())
def test_set_condition(case: SetCase) -> None:
    before_copy = [c.model_copy() for c in case.before]
    after, changed = set_condition(
        case.before, "Ready", case.status, case.reason, case.message, case.generation, NOW
    )
    assert changed is case.changed
    assert [c.type for c in after] == case.after_types
    ready = get_condition(after, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason, ready.message, ready.observed_generation) == (
        case.status,
        case.reason,
        case.message,
        case.generation,
    )
    assert ready.last_transition_time == case.transition
    others_before = [c for c in case.before if c.type != "Ready"]
    assert [c for c in after if c.type != "Ready"] == others_before
    assert case.before == before_copy, "the input list must not be modified"


def test_sub_second_times_are_truncated_because_kubernetes_stores_seconds() -> None:
    after, _ = set_condition([], "Ready", "True", "Reconciled", "", 1, NOW.replace(microsecond=7))
    assert after[0].last_transition_time == NOW


def test_times_in_another_zone_are_stored_in_utc() -> None:
    paris = NOW.astimezone(timezone(timedelta(hours=1)))
    after, _ = set_condition([], "Ready", "True", "Reconciled", "", 1, paris)
    assert after[0].last_transition_time.utcoffset() == timedelta(0)
    assert after[0].model_dump(mode="json")["lastTransitionTime"] == "2026-01-01T10:30:00Z"


def test_a_naive_now_is_refused_because_its_zone_is_a_guess() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        set_condition([], "Ready", "True", "Reconciled", "", 1, datetime(2026, 1, 1))


GET_CASES = {
    "the condition of the asked type is returned": (
        [condition(type="Verified"), condition()],
        "Ready",
        "Ready",
    ),
    "None is returned when no type matches": ([condition(type="Verified")], "Ready", None),
    "None is returned for an empty list": ([], "Ready", None),
}


@pytest.mark.parametrize(("conditions", "type", "expected"), GET_CASES.values(), ids=GET_CASES)
def test_get_condition(conditions: list[Condition], type: str, expected: str | None) -> None:
    found = get_condition(conditions, type)
    assert (found.type if found else None) == expected


statuses = st.sampled_from(["True", "False", "Unknown"])
reasons = st.from_regex(r"[A-Z][A-Za-z]{0,12}", fullmatch=True)


@given(
    first=st.tuples(statuses, reasons, st.text(max_size=20), st.integers(0, 10)),
    second=st.tuples(statuses, reasons, st.text(max_size=20), st.integers(0, 10)),
)
def test_setting_twice_is_idempotent_and_time_moves_only_on_a_flip(
    first: tuple[ConditionStatus, str, str, int], second: tuple[ConditionStatus, str, str, int]
) -> None:
    once, _ = set_condition([], "Ready", *first, EARLIER)
    twice, changed = set_condition(once, "Ready", *second, NOW)
    again, changed_again = set_condition(twice, "Ready", *second, NOW + timedelta(hours=1))
    assert changed is (first != second)
    assert (again, changed_again) == (twice, False)
    expected = NOW if first[0] != second[0] else EARLIER
    assert twice[0].last_transition_time == expected
