"""Setting status conditions the Kubernetes way: one per type, `lastTransitionTime` moving only when the
condition's status flips."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubedistill.api.status import Condition, ConditionType, Reason

Status = dict[str, Any]
ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class DesiredCondition:
    type: ConditionType
    status: ConditionStatus
    reason: Reason
    message: str = ""


def with_conditions(
    status: Mapping[str, Any],
    desired: Iterable[DesiredCondition],
    *,
    generation: int | None,
    now: str,
) -> Status:
    """A copy of `status` with these conditions set; others keep their place and values."""
    conditions = [dict(condition) for condition in status.get("conditions") or []]
    for wanted in desired:
        index = next((i for i, c in enumerate(conditions) if c.get("type") == wanted.type), None)
        previous = conditions[index] if index is not None else None
        condition = _render(wanted, previous, generation=generation, now=now)
        if index is None:
            conditions.append(condition)
        else:
            conditions[index] = condition
    return {**status, "conditions": conditions}


def condition_of(status: Mapping[str, Any], type_: ConditionType) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def _render(
    wanted: DesiredCondition, previous: Mapping[str, Any] | None, *, generation: int | None, now: str
) -> dict[str, Any]:
    unchanged = previous is not None and previous.get("status") == wanted.status
    transition = previous.get("lastTransitionTime") if unchanged and previous else None
    condition = Condition(
        type=wanted.type.value,
        status=wanted.status,
        reason=wanted.reason.value,
        message=wanted.message,
        observed_generation=generation,
        last_transition_time=transition or now,
    )
    return condition.model_dump(mode="json", by_alias=True, exclude_none=True)
