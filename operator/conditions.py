"""Setting status conditions the Kubernetes way: one per type, `lastTransitionTime` moving only when the
condition's status flips."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubedistill.api.status import Condition, ConditionType, DistillationJobStatus, Reason

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
    conditions: list[dict[str, Any]] = [dict(condition) for condition in _conditions(status)]
    for wanted in desired:
        index = next((i for i, c in enumerate(conditions) if c.get("type") == wanted.type), None)
        previous = conditions[index] if index is not None else None
        condition = _render(wanted, previous, generation=generation, now=now)
        if index is None:
            conditions.append(condition)
        else:
            conditions[index] = condition
    return {**status, "conditions": conditions}


def with_fields(status: Mapping[str, Any], **fields: Any) -> Status:
    """A copy of `status` with these `DistillationJobStatus` fields (by their Python names) set, validated
    by the model and written under its keys: no status key or type is restated by the operator."""
    given = DistillationJobStatus.model_validate(fields)
    return {**status, **given.model_dump(mode="json", by_alias=True, exclude_unset=True)}


def condition_of(status: Mapping[str, Any], type_: ConditionType) -> Mapping[str, Any] | None:
    return next((c for c in _conditions(status) if c.get("type") == type_), None)


def _conditions(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return status.get("conditions") or []


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
