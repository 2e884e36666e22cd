"""Deleting things the operator does not control: a job after the operator is uninstalled, a RayJob under a
job that had not finished (while the operator runs, and while it is down)."""

import pytest

from tests.operator.harness import JOBS, Cluster, eventually, job_manifest, running_operator

KUBERAY_RUNNING = {
    "jobDeploymentStatus": "Running",
    "jobStatus": "RUNNING",
    "rayClusterName": "demo-raycluster-x7k2p",
}


async def _created(cluster: Cluster) -> None:
    await eventually(lambda: cluster.condition("Created")["status"] == "True", what="the job created")


async def test_a_running_job_can_be_deleted_after_the_operator_is_gone(cluster: Cluster) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await _created(cluster)
        await cluster.set_rayjob_status(**KUBERAY_RUNNING)
        await eventually(lambda: cluster.condition("ProgressUnknown"), what="the progress reader at work")

    await cluster.delete_job()  # `helm uninstall` took the operator; `kubectl delete` must still work
    assert cluster.job() is None


@pytest.mark.parametrize("operator_down", [False, True], ids=["operator-running", "operator-down"])
async def test_a_rayjob_deleted_before_it_finished_fails_the_job_and_is_not_run_again(
    cluster: Cluster, operator_down: bool
) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await _created(cluster)
        await cluster.set_rayjob_status(**KUBERAY_RUNNING)
        await eventually(lambda: cluster.status()["phase"] == "Running", what="phase Running")
        if not operator_down:
            await cluster.delete_rayjob()
            await eventually(lambda: cluster.status()["phase"] == "Failed", what="phase Failed")
    if operator_down:
        await cluster.delete_rayjob()
        async with running_operator(cluster.server):
            await eventually(lambda: cluster.status()["phase"] == "Failed", what="phase Failed on resume")

    failed = cluster.condition("Failed")
    assert (failed["status"], failed["reason"]) == ("True", "RayJobDeleted")
    assert "delete and recreate the DistillationJob" in failed["message"]
    assert cluster.rayjob() is None, "the deleted RayJob was created again"


async def test_the_finalizer_an_older_operator_left_on_a_running_job_is_removed(cluster: Cluster) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await _created(cluster)
        await cluster.set_rayjob_status(**KUBERAY_RUNNING)
        await eventually(lambda: cluster.status()["phase"] == "Running", what="phase Running")
    await cluster.patch(JOBS, "demo", {"metadata": {"finalizers": ["kubedistill.io/operator"]}})

    async with running_operator(cluster.server):
        await eventually(
            lambda: not cluster.job()["metadata"].get("finalizers"), what="the finalizer removed"
        )
    await cluster.delete_job()
    assert cluster.job() is None
