"""Status changes from the job's own events: created, invalid, blocked by a name, edited."""

from collections.abc import Mapping, Sequence
from typing import Any

from kubedistill.api.rules import Problem
from kubedistill.api.status import ConditionType, Phase, Reason
from kubedistill.operator.conditions import (
    DesiredCondition,
    Status,
    condition_of,
    with_conditions,
    with_fields,
)


def created_status(
    status: Mapping[str, Any], rayjob_name: str, config_map_name: str, *, generation: int | None, now: str
) -> Status:
    message = f"created RayJob {rayjob_name} and ConfigMap {config_map_name}"
    created = DesiredCondition(ConditionType.CREATED, "True", Reason.RAY_JOB_CREATED, message)
    updated = with_conditions(status, [created], generation=generation, now=now)
    # Where the operator finds its children later (edits): the names they were created under.
    updated = with_fields(updated, ray_job_name=rayjob_name, config_map_name=config_map_name)
    # The RayJob's first event may have been mirrored already; a phase set from it is newer.
    return updated if updated.get("phase") else with_fields(updated, phase=Phase.PENDING)


def invalid_spec_status(
    status: Mapping[str, Any], problems: Sequence[Problem], *, generation: int | None, now: str
) -> Status:
    message = "; ".join(str(problem) for problem in problems)
    failed = DesiredCondition(ConditionType.FAILED, "True", Reason.INVALID_SPEC, message)
    return with_fields(with_conditions(status, [failed], generation=generation, now=now), phase=Phase.FAILED)


def forbidden_status(status: Mapping[str, Any], message: str, *, generation: int | None, now: str) -> Status:
    """A child the operator may not create: no retry helps until its RBAC changes."""
    failed = DesiredCondition(ConditionType.FAILED, "True", Reason.FORBIDDEN, message)
    return with_fields(with_conditions(status, [failed], generation=generation, now=now), phase=Phase.FAILED)


def api_missing_status(
    status: Mapping[str, Any], message: str, *, generation: int | None, now: str
) -> Status:
    waiting = DesiredCondition(ConditionType.CREATED, "False", Reason.RAY_JOB_API_MISSING, message)
    return with_conditions(status, [waiting], generation=generation, now=now)


def name_conflict_status(
    status: Mapping[str, Any], message: str, *, generation: int | None, now: str
) -> Status:
    blocked = DesiredCondition(ConditionType.CREATED, "False", Reason.NAME_CONFLICT, message)
    return with_conditions(status, [blocked], generation=generation, now=now)


def spec_change_status(
    status: Mapping[str, Any], ignored: Sequence[str], *, generation: int | None, now: str
) -> Status:
    """SpecChangeIgnored True naming the ignored fields; False once the spec matches the running job."""
    if ignored:
        message = (
            f"{', '.join(ignored)} cannot change after the job is created and was not applied; "
            "delete and recreate the job to change it"
        )
        desired = DesiredCondition(
            ConditionType.SPEC_CHANGE_IGNORED, "True", Reason.IMMUTABLE_FIELD_CHANGED, message
        )
    elif condition_of(status, ConditionType.SPEC_CHANGE_IGNORED) is None:
        return dict(status)
    else:
        desired = DesiredCondition(
            ConditionType.SPEC_CHANGE_IGNORED,
            "False",
            Reason.SPEC_APPLIED,
            "the spec matches the running job",
        )
    return with_conditions(status, [desired], generation=generation, now=now)


def invalid_edit_status(
    status: Mapping[str, Any], problems: Sequence[Problem], *, generation: int | None, now: str
) -> Status:
    """An edit that does not validate (it slipped past the CRD's schema) is not applied either."""
    message = "the edited spec is invalid and was not applied: " + "; ".join(str(p) for p in problems)
    desired = DesiredCondition(ConditionType.SPEC_CHANGE_IGNORED, "True", Reason.INVALID_SPEC, message)
    return with_conditions(status, [desired], generation=generation, now=now)


def is_created(status: Mapping[str, Any]) -> bool:
    created = condition_of(status, ConditionType.CREATED)
    return created is not None and created.get("status") == "True"
