"""The operator under faults: stopped mid-reconcile and restarted, and an API server that fails its writes.

Faults sit in front of the emulated API server (`ApiServer.interceptors`), so a rejected request really is
not applied, and a write whose reply was lost really is. Whatever happens, each job ends with exactly one
ConfigMap and one RayJob, never deleted and re-created, and a status that follows its RayJob.

A trainer's /metrics going away and coming back (ProgressUnknown True, then False with fresh progress) is
covered in test_operator.py.
"""

from dataclasses import dataclass

import kmock
import pytest

from kubedistill.operator.kube import DEFAULT_BACKOFF
from tests.operator.apiserver import Call, FailFirst, Hold
from tests.operator.harness import (
    CONFIGMAPS,
    JOBS,
    NAMESPACE,
    RAYJOBS,
    Cluster,
    eventually,
    job_manifest,
    running_operator,
)
from tests.operator.kmock_adapter import Action

CREATE_CONFIGMAP = Call(Action.CREATE, CONFIGMAPS)
CREATE_RAYJOB = Call(Action.CREATE, RAYJOBS)
PATCH_STATUS = Call(Action.UPDATE, JOBS, "status")
PATCH_JOB = Call(Action.UPDATE, JOBS)
"""kopf's own writes to the job: its finalizer and its progress annotations."""

CLIENT_ATTEMPTS = DEFAULT_BACKOFF.steps
"""How often the operator's client sends a write before its handler sees the failure."""
KUBERAY_INITIALIZING = {"jobDeploymentStatus": "Initializing", "rayClusterName": "demo-rc"}
KUBERAY_SUCCEEDED = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "rayClusterName": "demo-rc"}
# Never Running here: the progress reader would start, and kopf gives it 5 s to stop with the operator.


def assert_one_configmap_and_one_rayjob(cluster: Cluster, job: str = "demo") -> None:
    """Each child stored once under its name, never deleted in between (no duplicate, no re-creation)."""
    for resource, name in ((CONFIGMAPS, f"{job}-spec"), (RAYJOBS, job)):
        stored = [key for key in cluster.server.objects if key[0] == kmock.resource(resource)]
        assert stored == [(kmock.resource(resource), NAMESPACE, name)], f"{resource}: {stored}"
        history = cluster.server.objects[stored[0]].history
        assert None not in history, f"{name} was deleted and created again"


async def converged(cluster: Cluster, job: str = "demo") -> None:
    """Created, and the RayJob's state reaches the job's status (KubeRay plays its part here)."""
    await eventually(lambda: cluster.condition("Created", job)["status"] == "True", what="Created True")
    await cluster.set_rayjob_status(job, **KUBERAY_INITIALIZING)
    await eventually(lambda: "Initializing" in cluster.condition("Running", job)["message"], what="mirrored")
    assert cluster.status(job)["rayJobName"] == job
    assert cluster.status(job)["observedGeneration"] == 1


# -- stopped mid-reconcile ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    id: str
    held: Call
    """The request the operator is waiting on when it is stopped."""
    applied: bool
    """Whether the server did that write (the operator never saw the reply) or never got it."""
    children_before: tuple[str, ...]
    """Children that exist while the operator waits."""


KILL_POINTS = [
    KillPoint("creating-the-configmap", CREATE_CONFIGMAP, applied=False, children_before=()),
    KillPoint("configmap-created-reply-lost", CREATE_CONFIGMAP, applied=True, children_before=()),
    KillPoint("after-the-configmap-before-the-rayjob", CREATE_RAYJOB, applied=False, children_before=("cm",)),
    KillPoint("rayjob-created-reply-lost", CREATE_RAYJOB, applied=True, children_before=("cm",)),
    KillPoint(
        "after-the-children-before-the-status", PATCH_STATUS, applied=False, children_before=("cm", "rj")
    ),
]


@pytest.mark.parametrize("kill", KILL_POINTS, ids=lambda kill: kill.id)
async def test_an_operator_stopped_mid_reconcile_and_restarted_creates_each_child_once(
    cluster: Cluster, kill: KillPoint
) -> None:
    hold = Hold(kill.held)
    cluster.server.interceptors.append(hold)
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await eventually(hold.arrived.is_set, what=f"the operator waiting on {kill.held}")
        existing = (cluster.config_map() is not None, cluster.rayjob() is not None)
        assert existing == ("cm" in kill.children_before, "rj" in kill.children_before)
    # The operator is gone (kopf cancelled the waiting handler); only now does the request end.
    hold.release(applied=kill.applied)
    assert not cluster.status(), "no status was written before the stop"

    async with running_operator(cluster.server):
        await converged(cluster)

    assert_one_configmap_and_one_rayjob(cluster)


# -- API errors on writes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiFault:
    id: str
    call: Call
    status: int
    times: int = 1
    applied: bool = False
    retry_after: int | None = None

    @property
    def adopts(self) -> bool:
        """A 409 on a create says the child exists: the operator reads it and adopts it, never re-sends."""
        return self.status == 409 and self.call.action == Action.CREATE


API_FAULTS = [
    ApiFault("configmap-create-429", CREATE_CONFIGMAP, 429, retry_after=1),
    ApiFault("configmap-create-500", CREATE_CONFIGMAP, 500),
    ApiFault("configmap-create-500-after-the-write", CREATE_CONFIGMAP, 500, applied=True),
    ApiFault("configmap-create-409-it-exists", CREATE_CONFIGMAP, 409, applied=True),
    ApiFault("configmap-create-500-beyond-client-retries", CREATE_CONFIGMAP, 500, times=CLIENT_ATTEMPTS + 1),
    ApiFault("rayjob-create-429", CREATE_RAYJOB, 429, retry_after=1),
    ApiFault("rayjob-create-500", CREATE_RAYJOB, 500),
    ApiFault("rayjob-create-500-after-the-write", CREATE_RAYJOB, 500, applied=True),
    ApiFault("rayjob-create-409-it-exists", CREATE_RAYJOB, 409, applied=True),
    ApiFault("rayjob-create-500-beyond-client-retries", CREATE_RAYJOB, 500, times=CLIENT_ATTEMPTS + 1),
    ApiFault("status-patch-429", PATCH_STATUS, 429, retry_after=1),
    ApiFault("status-patch-500", PATCH_STATUS, 500),
    ApiFault("status-patch-409", PATCH_STATUS, 409),
    ApiFault("status-patch-500-beyond-client-retries", PATCH_STATUS, 500, times=CLIENT_ATTEMPTS + 1),
    # kopf's own writes, retried by kopf (with its own backoff, which honours Retry-After).
    ApiFault("kopf-job-patch-429", PATCH_JOB, 429, retry_after=1),
]


@pytest.mark.parametrize("fault", API_FAULTS, ids=lambda fault: fault.id)
async def test_a_failed_write_is_retried_and_nothing_is_lost_or_duplicated(
    cluster: Cluster, fault: ApiFault
) -> None:
    failing = FailFirst(fault.call, fault.status, fault.times, fault.applied, fault.retry_after)
    cluster.server.interceptors.append(failing)
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await converged(cluster)

    assert_one_configmap_and_one_rayjob(cluster)
    if fault.adopts:
        assert len(failing.seen) == 1, "a create answered 409 was sent again"
        reads = [r for r in cluster.requests() if Call(Action.FETCH, fault.call.resource).matches(r)]
        assert reads, "the existing child was not read back to check its owner"
        return
    assert len(failing.seen) > fault.times, "the failed request was tried again"
    if fault.retry_after is not None:
        waited = failing.seen[fault.times] - failing.seen[fault.times - 1]
        assert waited >= fault.retry_after - 0.05, f"retried after {waited:.2f} s despite Retry-After"


async def test_a_rayjob_change_whose_status_patch_fails_through_every_client_retry_still_reaches_the_job(
    cluster: Cluster,
) -> None:
    """kopf does not retry event handlers: the mirror of a RayJob change must not be dropped on an error."""
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await eventually(lambda: cluster.condition("Running")["reason"] == "RayJobPending", what="mirrored")
        failing = FailFirst(PATCH_STATUS, 500, times=CLIENT_ATTEMPTS)
        cluster.server.interceptors.append(failing)
        await cluster.set_rayjob_status(**KUBERAY_SUCCEEDED)
        await eventually(lambda: cluster.status()["phase"] == "Succeeded", what="phase Succeeded")

    assert len(failing.seen) > CLIENT_ATTEMPTS, "the patch was given up after the client's own retries"
