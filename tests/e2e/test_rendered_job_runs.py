"""A DistillationJob from creation to Succeeded, with nothing imitated on our side of any seam.

The real operator renders the RayJob and the ConfigMap into the API server emulator; a stand-in for KubeRay
and the kubelet (`tests.e2e.kuberay`) runs the rendered head container's entrypoint with its env and
volumes on a tiny model (local Ray, CPU); the operator scrapes the real trainer at the URL it computes for
the cluster's head Service, which the cluster's DNS resolves to loopback.
"""

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from kubedistill.api.telemetry import DEFAULT_METRICS_PORT
from kubedistill.operator.settings import DEFAULT_METRICS_URL_TEMPLATE
from tests.e2e.kuberay import ClusterDns, KubeRay
from tests.operator.harness import FAST_SETTINGS, Cluster, eventually, job_manifest, running_operator
from tests.runtime.conftest import TinyWorld

SETTINGS = dataclasses.replace(FAST_SETTINGS, metrics_url_template=DEFAULT_METRICS_URL_TEMPLATE)
"""The operator's own metrics URL (the head Service's name), read five times a second."""

STEPS = 60
"""Five epochs of the tiny world's 96 records at eight a step."""


def tiny_job(tiny: TinyWorld, work: Path, teacher_backend: str) -> dict[str, Any]:
    """Off-policy steps on the tiny models; models on one claim, checkpoints and output on another, each
    mounted in the pods at the path it has on this machine. Enough steps that training outlasts several of
    the operator's reads (five a second): a tiny step takes a few hundredths of a second, and four of them
    finished between two reads."""
    return job_manifest(
        "e2e",
        # On the CPU SGLang sizes its KV cache from the machine's free RAM (0.3 starts reliably here).
        teacher={"model": str(tiny.teacher), "backend": teacher_backend, "memFractionStatic": 0.3},
        student={"model": str(tiny.student), "replicas": 1, "gradientCheckpointing": False},
        data={"train": {"path": str(tiny.train)}, "maxLength": 64, "promptMaxLength": 32},
        training={
            "epochs": 5,
            "maxSteps": STEPS,
            "globalBatchSize": 8,
            "microBatchSize": 4,
            "learningRate": 1.0e-2,
            "warmupRatio": 0.0,
            "precision": "fp32",
        },
        checkpoint={"path": str(work / "checkpoints"), "everySteps": STEPS // 2},
        output={"path": str(work / "student")},
        cluster={
            "volumes": [
                {"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
                {"name": "work", "persistentVolumeClaim": {"claimName": "work"}},
            ],
            "volumeMounts": [
                {"name": "models", "mountPath": str(tiny.root), "readOnly": True},
                {"name": "work", "mountPath": str(work)},
            ],
        },
    )


@contextlib.asynccontextmanager
async def recording(cluster: Cluster, name: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every distinct status the job shows while the block runs (polled from the stored object)."""
    seen: list[dict[str, Any]] = []

    async def poll() -> None:
        while True:
            status = cluster.status(name)
            if status and (not seen or status != seen[-1]):
                seen.append(status)
            await asyncio.sleep(0.02)

    task = asyncio.create_task(poll())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        seen.append(cluster.status(name))


async def run_as_rendered(cluster: Cluster, tiny: TinyWorld, tmp_path: Path, teacher_backend: str) -> None:
    """The job from creation to Succeeded through the operator and the rendered pods; its statuses on the
    way must show Pending, Running and Succeeded in order, and the trainer's progress."""
    work = tmp_path / "work"
    work.mkdir()
    dns = ClusterDns()
    kuberay = KubeRay(cluster, dns, claims={"models": tiny.root, "work": work}, root=tmp_path / "node")
    async with running_operator(cluster.server, settings=SETTINGS, resolver=dns):
        await cluster.create_job(tiny_job(tiny, work, teacher_backend))
        await eventually(lambda: cluster.condition("Created", "e2e")["status"] == "True", what="created")
        async with recording(cluster, "e2e") as seen:
            code = await kuberay.run(cluster.status("e2e")["rayJobName"])
            assert code == 0, kuberay.log()
            await eventually(lambda: cluster.status("e2e")["phase"] == "Succeeded", what="Succeeded")

    phases = [status.get("phase") for status in seen]
    assert [phase for i, phase in enumerate(phases) if i == 0 or phase != phases[i - 1]] == [
        "Pending",
        "Running",
        "Succeeded",
    ]
    steps = [status["step"] for status in seen if "step" in status]
    assert steps, f"no progress reached the status; the trainer's log:\n{kuberay.log()}"
    assert steps == sorted(steps) and steps[-1] > steps[0] >= 1, steps
    final = seen[-1]
    assert final["totalSteps"] == STEPS
    assert math.isfinite(final["loss"]) and final["loss"] > 0
    assert final["stepTimeSeconds"] > 0
    reads = [_progress_condition(status) for status in seen if "step" in status]
    ray_cluster = cluster.rayjob(final["rayJobName"])["status"]["rayClusterName"]
    url = f"http://{ray_cluster}-head-svc.ml.svc:{DEFAULT_METRICS_PORT}/metrics"
    assert any(read["status"] == "False" and url in read["message"] for read in reads), reads
    assert (work / "student" / "config.json").is_file(), "the student was exported onto the claim"


async def test_a_job_runs_as_rendered_and_its_progress_reaches_status_until_it_succeeds(
    cluster: Cluster, tiny: TinyWorld, tmp_path: Path
) -> None:
    await run_as_rendered(cluster, tiny, tmp_path, teacher_backend="transformers")


def _progress_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "ProgressUnknown")
