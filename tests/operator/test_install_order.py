"""KubeRay installed after the operator: jobs wait saying why, and RayJobs are picked up without anyone
restarting the operator by hand (it exits once they are served; Kubernetes restarts the container)."""

import socket
from pathlib import Path

import aiohttp
import kmock

from kubedistill.operator.runner import READINESS_PATH, RunOptions
from tests.operator.harness import (
    RAYJOBS,
    Cluster,
    cli_operators,
    eventually,
    job_manifest,
    running_operator,
)

CHECK_SECONDS = "0.2"
ARGS = ["--all-namespaces", "--standalone"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _readiness(port: int) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{READINESS_PATH}") as answer,
    ):
        return answer.status, await answer.text()


async def test_a_job_waits_for_the_rayjob_api_and_runs_once_kuberay_is_installed(
    cluster: Cluster, tmp_path: Path
) -> None:
    rayjob_api = cluster.server.resources[RAYJOBS]
    del cluster.server.resources[RAYJOBS]
    env = {"KUBEDISTILL_RAYJOB_API_CHECK_SECONDS": CHECK_SECONDS}
    port = _free_port()
    args = [*ARGS, f"--metrics-port={port}"]
    async with cli_operators(cluster.server, tmp_path, ["before-kuberay"], args, **env) as (operator,):
        await cluster.create_job(job_manifest())
        waiting = await eventually(
            lambda: (
                cluster.condition("Created")["reason"] == "RayJobAPIMissing" and cluster.condition("Created")
            ),
            timeout=60,
            what="the job waiting for the RayJob API",
        )
        assert waiting["status"] == "False"
        assert (
            "the cluster serves no RayJob API (ray.io/v1 rayjobs): install KubeRay's CRDs"
            in waiting["message"]
        )
        assert "ERROR" in operator.output() and "serves no RayJob API" in operator.output()
        status, reason = await _readiness(port)
        assert (status, "serves no RayJob API" in reason) == (503, True), "not ready while it waits"

        cluster.server.resources[RAYJOBS] = rayjob_api  # KubeRay's chart installed
        await eventually(lambda: operator.process.poll() is not None, timeout=30, what="the operator to exit")
        assert operator.process.returncode != 0, "an exit Kubernetes counts as a failure, and restarts"
        assert "the RayJob API is served now; exiting" in operator.output()
        assert "Traceback" not in operator.output()

    restarted = RunOptions(standalone=True, metrics_port=_free_port())
    async with running_operator(cluster.server, restarted):  # Kubernetes restarted the container
        assert await _readiness(restarted.metrics_port) == (200, "ready\n")
        await eventually(lambda: cluster.condition("Created")["status"] == "True", timeout=60, what="created")
        assert cluster.rayjob() is not None
        await cluster.set_rayjob_status(
            jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName="c"
        )
        await eventually(
            lambda: cluster.status()["phase"] == "Running", what="the RayJob watched and mirrored"
        )

    warnings = [e["reason"] for e in cluster.events() if e["type"] == "Warning"]
    assert warnings.count("RayJobAPIMissing") == 1, "one warning for the wait, not one per retry"
    assert (kmock.resource(RAYJOBS), "ml", "demo") in cluster.server.objects
