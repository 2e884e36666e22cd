"""Argo CD shows a DistillationJob as Healthy, Degraded, Suspended or Progressing from the status the
operator writes, with the operator's own condition messages. The statuses here come from the operator's
status functions, so the check follows what the operator really writes."""

from typing import Any

import pytest

from kubedistill.api.rules import Problem
from kubedistill.operator.lifecycle import created_status, invalid_spec_status
from kubedistill.operator.mirror import deleted_rayjob_status, mirrored_status
from kubedistill.operator.progress import with_metrics_unreachable, with_progress
from tests.gitops.health import health

NOW = "2026-11-25T10:00:00Z"
URL = "http://demo-raycluster-x7k2p-head-svc.ml.svc:8080/metrics"


def _rayjob(**status: str) -> dict[str, Any]:
    return {"metadata": {"name": "demo"}, "status": status}


def _created() -> dict[str, Any]:
    return created_status({}, "demo", "demo-spec", generation=1, now=NOW)


def _mirrored(**kuberay: str) -> dict[str, Any]:
    return mirrored_status(_created(), _rayjob(**kuberay), generation=1, now=NOW)


def _running() -> dict[str, Any]:
    return _mirrored(jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName="demo-raycluster")


def _job(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    job: dict[str, Any] = {
        "apiVersion": "kubedistill.io/v1alpha1",
        "kind": "DistillationJob",
        "metadata": {"name": "demo", "namespace": "ml", "generation": generation},
        "spec": {"student": {"model": "/models/student"}, "data": {"train": {"path": "/data/train.jsonl"}}},
    }
    if status is not None:
        job["status"] = {**status, "observedGeneration": 1}
    return job


CASES = [
    ("new", None, "Progressing", "Waiting for the KubeDistill operator to accept the job"),
    ("created", _created(), "Progressing", "created RayJob demo and ConfigMap demo-spec"),
    (
        "pending",
        _mirrored(jobDeploymentStatus="Initializing"),
        "Progressing",
        "RayJob demo waits for its Ray cluster (KubeRay: Initializing)",
    ),
    ("running", _running(), "Progressing", "RayJob demo is running on demo-raycluster"),
    (
        "running-with-progress",
        with_progress(_running(), {"step": 120, "total_steps": 500}, url=URL, generation=1, now=NOW),
        "Progressing",
        "RayJob demo is running on demo-raycluster (step 120/500)",
    ),
    (
        "running-metrics-unreachable",
        with_metrics_unreachable(_running(), "connection refused", url=URL, generation=1, now=NOW),
        "Progressing",
        f"progress unknown: cannot read the trainer's metrics at {URL}: connection refused",
    ),
    (
        "suspended",
        _mirrored(jobDeploymentStatus="Suspended"),
        "Suspended",
        "RayJob demo is suspended without a Ray cluster (spec.suspend, or queued by Kueue)",
    ),
    ("succeeded", _mirrored(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED"), "Healthy", "succeeded"),
    (
        "ray-job-failed",
        _mirrored(jobDeploymentStatus="Failed", reason="SubmissionFailed", message="dashboard refused it"),
        "Degraded",
        "reason SubmissionFailed): dashboard refused it",
    ),
    (
        "invalid-spec",
        invalid_spec_status(
            {}, [Problem("spec.rollout", "required when spec.mode is onPolicy")], generation=1, now=NOW
        ),
        "Degraded",
        "spec.rollout: required when spec.mode is onPolicy",
    ),
    (
        "ray-job-deleted",
        deleted_rayjob_status(_running(), "demo", generation=1, now=NOW),
        "Degraded",
        "RayJob demo was deleted before it finished",
    ),
]


@pytest.mark.parametrize(("name", "status", "health_status", "message"), CASES, ids=[c[0] for c in CASES])
def test_health_follows_the_phase_with_the_conditions_message(
    name: str, status: dict[str, Any] | None, health_status: str, message: str
) -> None:
    got_status, got_message = health(_job(status))
    assert got_status == health_status
    assert message in got_message


@pytest.mark.parametrize(
    "status", [_running(), _mirrored(jobDeploymentStatus="Suspended")], ids=["running", "suspended"]
)
def test_an_edit_the_operator_has_not_seen_yet_is_progressing(status: dict[str, Any]) -> None:
    assert health(_job(status, generation=2)) == (
        "Progressing",
        "Waiting for the KubeDistill operator to observe generation 2",
    )


def test_a_finished_job_keeps_its_health_after_an_edit() -> None:
    succeeded = _mirrored(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    assert health(_job(succeeded, generation=3))[0] == "Healthy"
