"""The DistillationJob's phase and conditions from its RayJob's status, as KubeRay reports it.

KubeRay has two fields: `jobDeploymentStatus` (its lifecycle: Initializing, Running, Complete, Failed,
Suspended, ...) and `jobStatus` (Ray's: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED). `Complete` only
says the Ray job ended, so success is `Complete` with `SUCCEEDED`; `Complete` with anything else, or
`Failed`/`ValidationFailed`, is failure.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubedistill.api.status import RESUME_REFUSED_WORDS, TERMINAL_PHASES, ConditionType, Phase, Reason
from kubedistill.operator.conditions import DesiredCondition, Status, with_conditions, with_fields

SUSPENDED_DEPLOYMENTS = frozenset({"Suspending", "Suspended"})
FAILED_DEPLOYMENTS = frozenset({"Failed", "ValidationFailed"})
DEADLINES = {
    # KubeRay's reason (rayjob_types.go:72 at kuberay feeaf72f) -> ours, the field (the RayJob's and the
    # DistillationJob's share the name), and what ran out. Both count from the attempt's start.
    "DeadlineExceeded": (
        Reason.ACTIVE_DEADLINE_EXCEEDED,
        "activeDeadlineSeconds",
        "an attempt ran past spec.activeDeadlineSeconds ({seconds} s), which is not retried",
    ),
    "PreRunningDeadlineExceeded": (
        Reason.PRE_RUNNING_DEADLINE_EXCEEDED,
        "preRunningDeadlineSeconds",
        "the Ray cluster was not running within spec.preRunningDeadlineSeconds ({seconds} s) of the last"
        " attempt's start: its pods were not scheduled, their image not pulled, or Ray not ready",
    ),
}


@dataclass(frozen=True)
class Observed:
    phase: Phase
    reason: Reason
    message: str


def observe(rayjob: Mapping[str, Any]) -> Observed:
    name = rayjob.get("metadata", {}).get("name", "")
    status: Mapping[str, Any] = rayjob.get("status") or {}
    deployment: str = status.get("jobDeploymentStatus") or ""
    ray_status: str = status.get("jobStatus") or ""
    if deployment == "Complete" and ray_status == "SUCCEEDED":
        return Observed(Phase.SUCCEEDED, Reason.RAY_JOB_SUCCEEDED, f"RayJob {name} succeeded")
    if deployment == "Complete" or deployment in FAILED_DEPLOYMENTS:
        message: str = status.get("message") or ""
        refused = _resume_refusal(message)
        if refused:
            return Observed(Phase.FAILED, Reason.RESUME_REFUSED, refused)
        if status.get("reason") in DEADLINES:
            reason, field, what = DEADLINES[status["reason"]]
            rayjob_spec: Mapping[str, Any] = rayjob.get("spec") or {}
            seconds = rayjob_spec.get(field, "?")
            text = f"RayJob {name} failed: {what.format(seconds=seconds)}"
            return Observed(Phase.FAILED, reason, f"{text} (KubeRay: {message})" if message else text)
        return Observed(Phase.FAILED, Reason.RAY_JOB_FAILED, _failure_message(name, status))
    if deployment in SUSPENDED_DEPLOYMENTS:
        return Observed(
            Phase.SUSPENDED,
            Reason.RAY_JOB_SUSPENDED,
            f"RayJob {name} is suspended without a Ray cluster (spec.suspend, or queued by Kueue)",
        )
    if deployment == "Running":
        cluster: str = status.get("rayClusterName") or "its Ray cluster"
        return Observed(Phase.RUNNING, Reason.RAY_JOB_RUNNING, f"RayJob {name} is running on {cluster}")
    waiting = f" (KubeRay: {deployment})" if deployment else ""
    return Observed(
        Phase.PENDING, Reason.RAY_JOB_PENDING, f"RayJob {name} waits for its Ray cluster{waiting}"
    )


def mirrored_status(
    status: Mapping[str, Any], rayjob: Mapping[str, Any], *, generation: int | None, now: str
) -> Status:
    """`status` updated from the RayJob; a finished job's status stays as it finished."""
    if status.get("phase") in TERMINAL_PHASES:
        return dict(status)
    observed = observe(rayjob)
    updated = _with_phase(status, observed, generation=generation, now=now)
    ray_status: Mapping[str, Any] = rayjob.get("status") or {}
    # KubeRay's RayJob status field -> ours (ray-operator/apis/ray/v1/rayjob_types.go at kuberay feeaf72f).
    copied = {
        target: ray_status[source]
        for source, target in (
            ("dashboardURL", "dashboard_url"),
            ("startTime", "start_time"),
            ("endTime", "completion_time"),
        )
        if ray_status.get(source)
    }
    return with_fields(updated, ray_job_name=rayjob.get("metadata", {}).get("name"), **copied)


def deleted_rayjob_status(
    status: Mapping[str, Any], rayjob_name: str, *, generation: int | None, now: str
) -> Status:
    """The RayJob vanished under a job that had not finished: nothing will run it any more."""
    if status.get("phase") in TERMINAL_PHASES:
        return dict(status)
    message = f"RayJob {rayjob_name} was deleted before it finished; delete and recreate the DistillationJob"
    observed = Observed(Phase.FAILED, Reason.RAY_JOB_DELETED, message)
    return _with_phase(status, observed, generation=generation, now=now)


def _with_phase(status: Mapping[str, Any], observed: Observed, *, generation: int | None, now: str) -> Status:
    phase, reason, message = observed.phase, observed.reason, observed.message
    desired = [
        DesiredCondition(
            ConditionType.RUNNING, "True" if phase == Phase.RUNNING else "False", reason, message
        ),
        DesiredCondition(
            ConditionType.SUSPENDED, "True" if phase == Phase.SUSPENDED else "False", reason, message
        ),
    ]
    if phase == Phase.SUCCEEDED:
        desired.append(DesiredCondition(ConditionType.SUCCEEDED, "True", reason, message))
    if phase == Phase.FAILED:
        desired.append(DesiredCondition(ConditionType.FAILED, "True", reason, message))
    return with_fields(with_conditions(status, desired, generation=generation, now=now), phase=phase)


def _resume_refusal(message: str) -> str | None:
    """The runtime's refusal to resume, if that is why the job failed.

    KubeRay copies the Ray job's message into status.message (`rayjob_controller.go:356` at kuberay
    feeaf72f); for a failed entrypoint Ray's message ends with the tail of its logs
    (`ray/dashboard/modules/job/job_supervisor.py:449-455`, Ray 2.60), where `kubedistill run` printed the
    refusal as one line.
    """
    line = next((line for line in message.splitlines() if RESUME_REFUSED_WORDS in line), None)
    if line is None:
        return None
    # `FILE: spec.checkpoint.path: cannot resume ...`: the file is the mounted manifest, not the user's.
    return line[line.index("spec.checkpoint.path: ") :] if "spec.checkpoint.path: " in line else line.strip()


def _failure_message(name: str, status: Mapping[str, Any]) -> str:
    details = [
        f"jobDeploymentStatus {status.get('jobDeploymentStatus') or 'unknown'}",
        f"jobStatus {status.get('jobStatus') or 'unknown'}",
    ]
    if status.get("reason"):
        details.append(f"reason {status['reason']}")
    text = f"RayJob {name} failed ({', '.join(details)})"
    return f"{text}: {status['message']}" if status.get("message") else text
