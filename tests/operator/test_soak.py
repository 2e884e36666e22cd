"""Many jobs through one operator while KubeRay moves their RayJobs along and the API server fails writes.

The operator runs in a process of its own against the emulated API server. Jobs arrive a few at a time;
each RayJob goes through a random life (drawn from a seeded RNG): it succeeds, fails, is suspended, or is
deleted under its job. A share of the operator's writes is answered 409, 429 (Retry-After 1) or 500, some
after the write happened. Every job must reach the phase its RayJob's life calls for, with exactly one
ConfigMap and one RayJob, and the operator's memory must not grow with the jobs it has seen: each job is
deleted once checked (the emulator's garbage collector takes its children), and the jobs run in
batches, so between batches the operator holds no job at all. Memory is read there, both as resident
bytes and as Python's live memory blocks after a full collection (the leak detector: resident memory also
moves with the allocator), and its growth per job after the first quarter (the warm-up) is reported.

The small run is part of `make test`; the 200-job run is `make soak`.
"""

import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import pytest

from kubedistill.operator.rbac import RULES
from tests.operator.apiserver import ArchivingApiServer, Call, RandomFaults
from tests.operator.harness import (
    CONFIGMAPS,
    JOBS,
    NAMESPACE,
    RAYJOBS,
    Cluster,
    OperatorProcess,
    declare_resources,
    eventually,
    job_manifest,
    operator_process,
)
from tests.operator.kmock_adapter import Action
from tests.operator.rbac_audit import denied, operator_accesses

INITIALIZING = {"jobDeploymentStatus": "Initializing"}
RUNNING = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "rayClusterName": "rc"}
SUSPENDED = {"jobDeploymentStatus": "Suspended"}
SUCCEEDED = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "rayClusterName": "rc"}
RAY_FAILED = {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "rayClusterName": "rc"}
DEPLOYMENT_FAILED = {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded"}
DELETED = None
"""The RayJob is deleted (by hand, or KubeRay's TTL) before it finished."""


@dataclass(frozen=True)
class Life:
    """What happens to a RayJob, and what the job's status must end with."""

    steps: tuple[dict[str, Any] | None, ...]
    phase: str
    reason: str


LIVES = {
    "succeeds": Life((INITIALIZING, RUNNING, SUCCEEDED), "Succeeded", "RayJobSucceeded"),
    "fails": Life((INITIALIZING, RUNNING, RAY_FAILED), "Failed", "RayJobFailed"),
    "cannot-deploy": Life((INITIALIZING, DEPLOYMENT_FAILED), "Failed", "ActiveDeadlineExceeded"),
    "suspended": Life((INITIALIZING, SUSPENDED), "Suspended", "RayJobSuspended"),
    "resumed": Life((INITIALIZING, SUSPENDED, RUNNING, SUCCEEDED), "Succeeded", "RayJobSucceeded"),
    "rayjob-deleted": Life((INITIALIZING, RUNNING, DELETED), "Failed", "RayJobDeleted"),
}
CONDITION_OF_PHASE = {"Succeeded": "Succeeded", "Failed": "Failed", "Suspended": "Suspended"}

ALL_ERRORS = (409, 429, 500)
FAULTED = {
    Call(Action.CREATE, CONFIGMAPS): ALL_ERRORS,
    Call(Action.CREATE, RAYJOBS): ALL_ERRORS,
    Call(Action.UPDATE, JOBS, "status"): ALL_ERRORS,
    # kopf's finalizer and progress annotations: kopf takes a 409 there for an unexpected error and leaves
    # the job until its next watch event (minutes on a quiet cluster), so none is injected.
    Call(Action.UPDATE, JOBS): (429, 500),
}
JOB_TIMEOUT_SECONDS = 120.0
SETTLE_SECONDS = 6.0
"""Quiet before a memory sample that counts: kopf keeps an object's worker (and the last body it saw) 5 s
after its last event, and gives a stopping daemon as long."""


@dataclass
class Soak:
    cluster: Cluster
    rng: random.Random
    concurrency: asyncio.Semaphore
    operator: OperatorProcess
    settle_seconds: float
    done: int = 0
    memory: list[tuple[int, int, int]] = field(default_factory=list)
    """(jobs done, the operator's resident bytes, its live Python memory blocks): at the start and after
    each batch of jobs."""
    to_phase: list[float] = field(default_factory=list)
    """Seconds from a job's creation to its final phase."""
    to_gone: list[float] = field(default_factory=list)
    """Seconds from a job's creation until, deleted, it is gone (finalizer released)."""

    async def sample_memory(self) -> None:
        await asyncio.sleep(self.settle_seconds)
        self.memory.append((self.done, self.operator.rss(), await self.operator.live_blocks()))

    async def run_job(self, name: str, life: Life) -> None:
        cluster = self.cluster
        async with self.concurrency:
            started = time.perf_counter()
            await cluster.create_job(job_manifest(name))
            await eventually(lambda: cluster.rayjob(name), timeout=JOB_TIMEOUT_SECONDS, what=f"{name} RayJob")
            for step in life.steps:
                await asyncio.sleep(self.rng.uniform(0.0, 0.05))
                if step is DELETED:
                    await cluster.delete_rayjob(name)
                else:
                    await cluster.set_rayjob_status(name, **step)
            await eventually(
                lambda: cluster.status(name).get("phase") == life.phase,
                timeout=JOB_TIMEOUT_SECONDS,
                what=f"{name} {life.phase}",
            )
            self.to_phase.append(time.perf_counter() - started)
            condition = cluster.condition(CONDITION_OF_PHASE[life.phase], name)
            assert (condition["status"], condition["reason"]) == ("True", life.reason), (name, condition)
            uid = cluster.job(name)["metadata"]["uid"]
            await cluster.delete_job(name)
            await eventually(
                lambda: cluster.job(name) is None, timeout=JOB_TIMEOUT_SECONDS, what=f"{name} gone"
            )
            self.to_gone.append(time.perf_counter() - started)
        assert_one_configmap_and_one_rayjob(cluster, name, uid)
        self.done += 1


def assert_one_configmap_and_one_rayjob(cluster: Cluster, job: str, uid: str) -> None:
    """Each child stored once under its name, owned by its job, never created again after a deletion."""
    for resource, name in ((CONFIGMAPS, f"{job}-spec"), (RAYJOBS, job)):
        stored = cluster.server.objects[kmock.resource(resource), NAMESPACE, name]
        versions = list(stored.history)
        if None in versions:
            deleted_at = versions.index(None)
            assert not any(versions[deleted_at:]), f"{name} was created again after its deletion"
        assert versions[0]["metadata"]["ownerReferences"][0]["uid"] == uid, f"{name} is not owned by {job}"


async def soak(
    jobs: int, seed: int, workdir: Path, *, batches: int = 1, settle_seconds: float = 0.0
) -> dict[str, Any]:
    rng = random.Random(seed)
    names = [f"soak-{index:04d}" for index in range(jobs)]
    lives = {name: rng.choice(list(LIVES)) for name in names}
    async with ArchivingApiServer() as server, kmock.Server(server):
        declare_resources(server)
        faults = RandomFaults(random.Random(seed + 1), rate=0.1, calls=FAULTED)
        server.interceptors.append(faults)
        async with operator_process(server, workdir) as operator:
            run = Soak(
                Cluster(server), random.Random(seed + 2), asyncio.Semaphore(10), operator, settle_seconds
            )
            await run.sample_memory()
            started = time.perf_counter()
            # In quarters, each run to its end: every sample then sees the operator with no job left.
            for index in range(batches):
                batch = names[index * jobs // batches : (index + 1) * jobs // batches]
                await asyncio.gather(*(run.run_job(name, LIVES[lives[name]]) for name in batch))
                await run.sample_memory()
            seconds = time.perf_counter() - started
        accesses = operator_accesses(server.served())
    assert not denied(accesses, RULES), "requests the operator's RBAC rules do not allow"
    done, rss, blocks = zip(*run.memory, strict=True)
    result = {
        "jobs": jobs,
        "seconds": round(seconds, 1),
        "operator_requests": len(accesses),
        "injected_faults": dict(sorted(faults.injected.items())),
        "lives": {life: sum(1 for chosen in lives.values() if chosen == life) for life in LIVES},
        "seconds_to_phase": _median_and_max(run.to_phase),
        "seconds_to_gone": _median_and_max(run.to_gone),
        "rss_mib": {n: round(value / 2**20, 1) for n, value in zip(done, rss, strict=True)},
        "live_blocks": dict(zip(done, blocks, strict=True)),
    }
    if batches >= 4:
        # The first quarter warms caches, pools and the allocator; from then on, what grows per job is kept.
        result["rss_kib_per_job"] = round(_slope(done, rss, after=jobs // 4) / 1024, 2)
        result["live_blocks_per_job"] = round(_slope(done, blocks, after=jobs // 4), 2)
    return result


def _slope(done: Sequence[int], values: Sequence[int], *, after: int) -> float:
    kept = [(n, value) for n, value in zip(done, values, strict=True) if n >= after]
    return statistics.linear_regression([n for n, _ in kept], [value for _, value in kept]).slope


def _median_and_max(values: list[float]) -> tuple[float, float]:
    return round(statistics.median(values), 2), round(max(values), 2)


def report(result: dict[str, Any]) -> None:
    print("\nsoak:", ", ".join(f"{key}={value}" for key, value in result.items()))


async def test_twenty_jobs_through_faults_each_reach_their_phase_with_one_configmap_and_one_rayjob(
    tmp_path: Path,
) -> None:
    result = await soak(20, seed=7, workdir=tmp_path)
    report(result)
    assert sum(result["injected_faults"].values()) > 0, "the run met no faults"


@pytest.mark.soak
async def test_two_hundred_jobs_through_faults_and_the_operators_memory_stays_flat(tmp_path: Path) -> None:
    result = await soak(200, seed=11, workdir=tmp_path, batches=8, settle_seconds=SETTLE_SECONDS)
    report(result)
    assert set(result["injected_faults"]) == {409, 429, 500}
    # Calibrated on this machine: runs without a leak measured -10 to +20 blocks per job (the count moves by
    # about 2000 blocks from one quiet moment to the next); keeping just each finished job's status dict
    # (StatusWriter not forgetting it) measured 30 to 50, keeping its body would be hundreds.
    assert result["live_blocks_per_job"] < 40
