"""The real operator (kopf) against an emulated API server on loopback; the tests play user and KubeRay."""

import dataclasses
from collections.abc import Iterator

import kmock
import pytest

from kubedistill.api import parse_job, telemetry
from kubedistill.operator.render import render
from kubedistill.runtime.trainer.metrics import TrainerMetrics
from tests.operator.harness import (
    CONFIGMAPS,
    FAST_SETTINGS,
    JOBS,
    NAMESPACE,
    RAYJOBS,
    Cluster,
    eventually,
    job_manifest,
    running_operator,
)


def _job_of(cluster: Cluster, name: str = "demo") -> object:
    return parse_job({key: value for key, value in cluster.job(name).items() if key != "status"})


async def _created(cluster: Cluster, name: str = "demo") -> None:
    await eventually(lambda: cluster.condition("Created", name)["status"] == "True", what=f"{name} created")


async def _running(cluster: Cluster) -> None:
    """Running, and the progress reader has had its first go (nothing serves metrics unless a test does)."""
    await eventually(lambda: cluster.status()["phase"] == "Running", what="phase Running")
    await eventually(lambda: cluster.condition("ProgressUnknown"), what="a first read of the metrics")


async def test_a_new_job_gets_its_configmap_and_rayjob_as_rendered(cluster: Cluster) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await _created(cluster)

    rayjob, config_map = cluster.rayjob(), cluster.config_map()
    for stored, expected in zip(
        (config_map, rayjob), render(_job_of(cluster), FAST_SETTINGS.render), strict=True
    ):
        for key in ("apiVersion", "kind", "spec", "data"):
            assert stored.get(key) == expected.get(key)
        for key in ("name", "labels", "ownerReferences"):
            assert stored["metadata"][key] == expected["metadata"][key]
    assert cluster.status()["phase"] == "Pending"
    assert cluster.status()["rayJobName"] == "demo"
    assert cluster.status()["observedGeneration"] == 1


RECONCILES = "kubedistill_operator_reconciles_total"
KUBERAY_RUNNING = {
    "jobDeploymentStatus": "Running",
    "jobStatus": "RUNNING",
    "rayClusterName": "demo-raycluster-x7k2p",
    "dashboardURL": "demo-raycluster-x7k2p-head-svc.ml.svc.cluster.local:8265",
    "startTime": "2026-11-25T10:00:00Z",
}


async def test_the_rayjob_lifecycle_is_mirrored_into_phase_and_conditions(cluster: Cluster) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await _created(cluster)

        await cluster.set_rayjob_status(jobDeploymentStatus="Initializing")
        await eventually(lambda: "Initializing" in cluster.condition("Running")["message"])
        assert cluster.status()["phase"] == "Pending"
        pending_since = cluster.condition("Running")["lastTransitionTime"]

        await cluster.set_rayjob_status(**KUBERAY_RUNNING)
        await eventually(lambda: cluster.status()["phase"] == "Running")
        running = cluster.condition("Running")
        assert (running["status"], running["reason"]) == ("True", "RayJobRunning")
        assert running["lastTransitionTime"] >= pending_since
        assert cluster.status()["dashboardURL"] == KUBERAY_RUNNING["dashboardURL"]
        assert cluster.status()["startTime"] == KUBERAY_RUNNING["startTime"]

        await cluster.set_rayjob_status(
            jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime="2026-11-25T12:00:00Z"
        )
        await eventually(lambda: cluster.status()["phase"] == "Succeeded")

    succeeded = cluster.condition("Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("True", "RayJobSucceeded")
    assert cluster.condition("Running")["status"] == "False"
    assert cluster.status()["completionTime"] == "2026-11-25T12:00:00Z"


@pytest.mark.parametrize(
    ("kuberay_status", "reason", "in_message"),
    [
        ({"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}, "RayJobFailed", "jobStatus FAILED"),
        (
            {
                "jobDeploymentStatus": "Failed",
                "reason": "SubmissionFailed",
                "message": "dashboard refused it",
            },
            "RayJobFailed",
            "reason SubmissionFailed",
        ),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, "RayJobFailed", "jobStatus STOPPED"),
        (
            {"jobDeploymentStatus": "Failed", "reason": "PreRunningDeadlineExceeded", "message": "never ran"},
            "PreRunningDeadlineExceeded",
            "spec.preRunningDeadlineSeconds (3600 s)",
        ),
    ],
    ids=["complete-but-failed", "deployment-failed", "stopped", "never-ran"],
)
async def test_a_failed_rayjob_fails_the_job_saying_why(
    cluster: Cluster, kuberay_status: dict[str, str], reason: str, in_message: str
) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await _created(cluster)
        await cluster.set_rayjob_status(**kuberay_status)
        await eventually(lambda: cluster.status()["phase"] == "Failed")

    failed = cluster.condition("Failed")
    assert (failed["status"], failed["reason"]) == ("True", reason)
    assert in_message in failed["message"]


@pytest.fixture
def trainer_metrics() -> Iterator[TrainerMetrics]:
    """The runtime's own /metrics server, labelled as the trainer in the job's pod labels it (the e2e test
    runs the whole pod)."""
    metrics = TrainerMetrics(NAMESPACE, "demo")
    metrics.serve(0)
    yield metrics
    metrics.close()


async def test_training_progress_is_read_from_the_trainer_and_its_loss_reported(
    cluster: Cluster, trainer_metrics: TrainerMetrics
) -> None:
    for metric, value in [
        (telemetry.STEP, 120),
        (telemetry.TOTAL_STEPS, 1000),
        (telemetry.EPOCH, 1),
        (telemetry.LOSS, 1.25),
        (telemetry.KD_LOSS, 0.5),
        (telemetry.LAST_STEP_SECONDS, 2.5),
        (telemetry.TOKENS_PER_SECOND, 50000.0),
        (telemetry.LAST_CHECKPOINT_STEP, 100),
    ]:
        trainer_metrics.set(metric, value)
    settings = dataclasses.replace(
        FAST_SETTINGS,
        metrics_url_template=f"http://127.0.0.1:{trainer_metrics.port}/metrics?cluster={{cluster}}",
    )
    async with running_operator(cluster.server, settings=settings) as metrics:
        await cluster.create_job(job_manifest())
        await _created(cluster)
        await cluster.set_rayjob_status(**KUBERAY_RUNNING)
        await eventually(lambda: cluster.status().get("step") == 120, what="step 120")

        progress = {
            key: cluster.status()[key] for key in ("step", "totalSteps", "epoch", "lastCheckpointStep")
        }
        assert progress == {"step": 120, "totalSteps": 1000, "epoch": 1, "lastCheckpointStep": 100}
        assert cluster.status()["loss"] == 1.25
        assert cluster.status()["kdLoss"] == 0.5
        assert cluster.status()["stepTimeSeconds"] == 2.5
        assert cluster.status()["tokensPerSecond"] == 50000.0
        known = cluster.condition("ProgressUnknown")
        assert (known["status"], known["reason"]) == ("False", "MetricsRead")
        assert "cluster=demo-raycluster-x7k2p" in known["message"]

        port = trainer_metrics.port
        trainer_metrics.close()
        await eventually(lambda: cluster.condition("ProgressUnknown")["status"] == "True", what="unknown")
        assert cluster.condition("ProgressUnknown")["reason"] == "MetricsUnreachable"
        assert metrics.registry.get_sample_value("kubedistill_operator_scrape_failures_total") >= 1
        assert cluster.status()["phase"] == "Running"
        assert cluster.status()["step"] == 120

        trainer_metrics.set(telemetry.STEP, 121)
        trainer_metrics.serve(port)
        await eventually(lambda: cluster.status().get("step") == 121, what="step 121 after recovery")
        assert cluster.condition("ProgressUnknown")["status"] == "False"


async def test_suspend_and_resume_reach_the_rayjob(cluster: Cluster) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await _created(cluster)

        await cluster.edit_spec({"suspend": True})
        await eventually(lambda: cluster.rayjob()["spec"]["suspend"] is True, what="RayJob suspended")
        await cluster.set_rayjob_status(jobDeploymentStatus="Suspended")
        await eventually(lambda: cluster.status()["phase"] == "Suspended")
        assert cluster.condition("Suspended")["status"] == "True"

        await cluster.edit_spec({"suspend": False, "ttlSecondsAfterFinished": 600})
        await eventually(lambda: cluster.rayjob()["spec"]["suspend"] is False, what="RayJob resumed")
        assert cluster.rayjob()["spec"]["ttlSecondsAfterFinished"] == 600
        assert cluster.condition("SpecChangeIgnored") is None


async def test_other_spec_edits_are_ignored_with_a_condition_and_an_event_naming_the_field(
    cluster: Cluster,
) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await _created(cluster)
        rayjob_spec = cluster.rayjob()["spec"]

        await cluster.edit_spec({"student": {"model": "Qwen/Qwen3-0.6B", "replicas": 4}})
        await eventually(lambda: cluster.condition("SpecChangeIgnored")["status"] == "True", what="ignored")
        message = cluster.condition("SpecChangeIgnored")["message"]
        assert "spec.student.replicas" in message
        assert cluster.condition("SpecChangeIgnored")["reason"] == "ImmutableFieldChanged"
        assert cluster.condition("SpecChangeIgnored")["observedGeneration"] == 2
        await eventually(lambda: _events(cluster, "SpecChangeIgnored"), what="a Warning event")
        assert "spec.student.replicas" in _events(cluster, "SpecChangeIgnored")[0]["message"]

        await cluster.edit_spec({"student": {"model": "Qwen/Qwen3-0.6B", "replicas": 1}})
        await eventually(lambda: cluster.condition("SpecChangeIgnored")["status"] == "False", what="applied")

    assert cluster.rayjob()["spec"] == rayjob_spec


async def test_an_edit_that_does_not_validate_is_not_applied_and_says_why(cluster: Cluster) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await _created(cluster)
        cluster.server.cel_rules = False  # the CRD of an older release: the edit slips past its rules
        await cluster.edit_spec({"mode": "onPolicy", "suspend": True})
        await eventually(lambda: cluster.condition("SpecChangeIgnored")["status"] == "True", what="ignored")
        await eventually(lambda: _events(cluster, "InvalidSpec"), what="an InvalidSpec event")

    ignored = cluster.condition("SpecChangeIgnored")
    assert ignored["reason"] == "InvalidSpec"
    assert "spec.rollout: required when spec.mode is onPolicy" in ignored["message"]
    assert cluster.rayjob()["spec"]["suspend"] is False
    assert cluster.status()["phase"] == "Pending"


def _events(cluster: Cluster, reason: str) -> list[dict[str, object]]:
    return [
        event for event in cluster.events() if event.get("reason") == reason and event["type"] == "Warning"
    ]


async def test_a_deleted_job_is_released_and_its_children_go_with_it_by_owner_references(
    cluster: Cluster,
) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await _created(cluster)
        await cluster.set_rayjob_status(**KUBERAY_RUNNING)
        await _running(cluster)
        children = (cluster.rayjob(), cluster.config_map())

        await cluster.delete_job()
        await eventually(lambda: cluster.job() is None, what="the job to go (no finalizer left behind)")

    uid = cluster.server.objects[kmock.resource(JOBS), "ml", "demo"].last["metadata"]["uid"]
    for child in children:
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["uid"], owner["controller"], owner["blockOwnerDeletion"]) == (uid, True, True)
    assert cluster.rayjob() is None and cluster.config_map() is None, "garbage-collected with their owner"


async def test_a_restarted_operator_adopts_the_children_instead_of_duplicating_them(cluster: Cluster) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await _created(cluster)
    await cluster.set_rayjob_status(**KUBERAY_RUNNING)

    async with running_operator(cluster.server):
        await _running(cluster)

    for resource, name in ((RAYJOBS, "demo"), (CONFIGMAPS, "demo-spec")):
        history = cluster.server.objects[kmock.resource(resource), "ml", name].history
        assert None not in history, f"{name} was deleted and created again"
    assert cluster.condition("Created")["status"] == "True"


async def test_a_conflict_and_a_server_error_answered_once_are_retried_and_nothing_is_lost(
    cluster: Cluster,
) -> None:
    server = cluster.server
    server["create", kmock.resource(CONFIGMAPS)][:1] << kmock.KubernetesError(
        status=409, reason="AlreadyExists", message="injected conflict"
    )
    server["create", kmock.resource(RAYJOBS)][:1] << kmock.KubernetesError(
        status=500, reason="InternalError", message="injected failure"
    )
    server["update", kmock.resource(JOBS), kmock.subresource("status")][:1] << kmock.KubernetesError(
        status=500, reason="InternalError", message="injected failure"
    )
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await _created(cluster)
        await cluster.set_rayjob_status(**KUBERAY_RUNNING)
        await _running(cluster)

    assert cluster.rayjob() is not None and cluster.config_map() is not None
    rayjob_posts = [r for r in server if r.resource == kmock.resource(RAYJOBS) and r.method == "POST"]
    assert len(rayjob_posts) >= 2, "the failed create was retried"


async def test_an_invalid_job_fails_with_an_event_and_other_jobs_are_still_served(cluster: Cluster) -> None:
    invalid = job_manifest("broken", mode="onPolicy")
    cluster.server.cel_rules = False  # the CRD of an older release: the spec slips past its rules
    async with running_operator(cluster.server):
        await cluster.create_job(invalid)
        await eventually(lambda: cluster.status("broken").get("phase") == "Failed", what="broken failed")
        await cluster.create_job(job_manifest("fine"))
        await _created(cluster, "fine")
        await eventually(lambda: _events(cluster, "InvalidSpec"), what="an InvalidSpec event")

    failed = cluster.condition("Failed", "broken")
    assert (failed["status"], failed["reason"]) == ("True", "InvalidSpec")
    assert "spec.rollout: required when spec.mode is onPolicy" in failed["message"]
    assert "spec.rollout" in _events(cluster, "InvalidSpec")[0]["message"]
    assert cluster.rayjob("broken") is None
    assert cluster.rayjob("fine") is not None


async def test_a_name_taken_by_a_foreign_rayjob_blocks_creation_until_it_is_gone(cluster: Cluster) -> None:
    foreign = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "demo", "namespace": "ml"}}
    async with cluster.server.post("/apis/ray.io/v1/namespaces/ml/rayjobs", json=foreign) as response:
        assert response.status == 200
    async with running_operator(cluster.server) as metrics:
        await cluster.create_job(job_manifest())
        await eventually(lambda: cluster.condition("Created")["reason"] == "NameConflict", what="conflict")
        assert "RayJob ml/demo exists and is not owned by this job" in cluster.condition("Created")["message"]
        retries = {"handler": "create", "result": "retry"}
        await eventually(lambda: metrics.registry.get_sample_value(RECONCILES, retries) >= 2, what="a retry")

        async with cluster.server.delete("/apis/ray.io/v1/namespaces/ml/rayjobs/demo") as response:
            assert response.status == 200
        await _created(cluster)

    assert cluster.rayjob()["metadata"]["ownerReferences"][0]["name"] == "demo"
    assert len(_events(cluster, "NameConflict")) == 1, "one event per conflict, not one per retry"
    assert metrics.registry.get_sample_value("kubedistill_operator_errors_total", {"handler": "create"}) >= 2


async def test_a_rayjob_deleted_under_a_running_job_fails_it(cluster: Cluster) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await _created(cluster)
        async with cluster.server.delete("/apis/ray.io/v1/namespaces/ml/rayjobs/demo") as response:
            assert response.status == 200
        await eventually(lambda: cluster.status()["phase"] == "Failed")

    assert cluster.condition("Failed")["reason"] == "RayJobDeleted"


async def test_operator_metrics_count_reconciles_and_jobs_by_phase(cluster: Cluster) -> None:
    async with running_operator(cluster.server) as metrics:
        await cluster.create_job(job_manifest())
        await _created(cluster)
        cluster.server.cel_rules = False  # the CRD of an older release: the spec slips past its rules
        await cluster.create_job(job_manifest("broken", mode="onPolicy"))
        await eventually(lambda: cluster.status("broken").get("phase") == "Failed")
        sample = metrics.registry.get_sample_value

        await eventually(lambda: sample("kubedistill_operator_jobs", {"phase": "Failed"}) == 1)
        assert sample("kubedistill_operator_jobs", {"phase": "Pending"}) == 1
        assert (
            sample("kubedistill_operator_reconciles_total", {"handler": "create", "result": "success"}) >= 1
        )
        assert (
            sample("kubedistill_operator_reconciles_total", {"handler": "create", "result": "failure"}) == 1
        )
        assert sample("kubedistill_operator_reconcile_duration_seconds_count", {"handler": "create"}) >= 2
