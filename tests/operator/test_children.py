"""The operator's children under names it derives, found again by what it recorded; and the warning about
paths that would land inside the container image. The real operator against the emulated API server."""

import asyncio
from typing import Any

import kmock

from tests.operator.harness import CONFIGMAPS, RAYJOBS, Cluster, eventually, job_manifest, running_operator

LONG_NAME = "2026-12-01-team-search-qwen3-8b-to-qwen3-0-6b-offpolicy-distill"
"""63 characters and a leading digit: a valid DNS label, neither a valid nor a short enough RayJob name."""


def _rayjob_posts(cluster: Cluster) -> list[Any]:
    return [r for r in cluster.requests() if r.resource == kmock.resource(RAYJOBS) and r.method == "POST"]


def _events(cluster: Cluster, reason: str) -> list[dict[str, Any]]:
    return [event for event in cluster.events() if event.get("reason") == reason]


async def test_a_job_with_a_long_name_gets_short_children_which_the_operator_finds_again(
    cluster: Cluster,
) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest(LONG_NAME))
        await eventually(lambda: cluster.condition("Created", LONG_NAME)["status"] == "True", what="created")
        status = cluster.status(LONG_NAME)
        rayjob_name, config_map_name = status["rayJobName"], status["configMapName"]
        assert len(rayjob_name) <= 47 and len(config_map_name) <= 47
        for resource, name in ((RAYJOBS, rayjob_name), (CONFIGMAPS, config_map_name)):
            child = cluster.stored(resource, name)
            assert child is not None, f"no {resource} {name}"
            assert child["metadata"]["labels"]["kubedistill.io/job"] == LONG_NAME

        # KubeRay's status reaches the job through the RayJob's label, and an edit reaches the RayJob
        # under the name the operator recorded.
        await cluster.set_rayjob_status(rayjob_name, jobDeploymentStatus="Running", rayClusterName="c-x1")
        await eventually(lambda: cluster.status(LONG_NAME)["phase"] == "Running", what="Running")
        await cluster.edit_spec({"suspend": True}, name=LONG_NAME)
        await eventually(
            lambda: cluster.stored(RAYJOBS, rayjob_name)["spec"]["suspend"] is True, what="suspended"
        )

    assert cluster.rayjob(LONG_NAME) is None, "no child under the job's own (too long) name"


async def test_paths_on_no_volume_are_warned_of_once_naming_the_fields(cluster: Cluster) -> None:
    manifest = job_manifest(
        checkpoint={"path": "/checkpoints"},
        cluster={
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        },
    )
    async with running_operator(cluster.server):
        await cluster.create_job(manifest)
        await eventually(lambda: cluster.condition("EphemeralStorage"), what="the storage condition")
        await eventually(lambda: _events(cluster, "PathNotOnVolume"), what="a Warning event")
    async with running_operator(cluster.server):  # a restart resumes the job: no second event
        await eventually(lambda: len(_rayjob_posts(cluster)) == 2, what="the resumed job's children adopted")
        # kopf posts events from a queue of its own: give a wrong second one the time to arrive.
        await asyncio.sleep(1.0)

    condition = cluster.condition("EphemeralStorage")
    assert (condition["status"], condition["reason"]) == ("True", "PathNotOnVolume")
    assert "spec.checkpoint.path: /checkpoints" in condition["message"]
    assert "spec.data.train.path" not in condition["message"], "it is on the claim mounted at /data"
    (event,) = _events(cluster, "PathNotOnVolume")
    assert event["type"] == "Warning" and "spec.checkpoint.path" in event["message"]
