"""The RBAC rules in `kubedistill.operator.rbac` are exactly what the operator uses.

Every operator test checks that each request was allowed (the `cluster` fixture). Here one scenario per
way of running touches every path (creation with conflicts, an edit, an event, an orphan RayJob, the
peering), and every rule for that way of running must have been needed.
"""

import kmock
import pytest

from kubedistill.operator.rbac import rules_for
from kubedistill.operator.runner import RunOptions
from tests.operator.harness import (
    CLUSTER_PEERINGS,
    CONFIGMAPS,
    NAMESPACE,
    NAMESPACED_PEERINGS,
    RAYJOBS,
    Cluster,
    eventually,
    job_manifest,
    running_operator,
)
from tests.operator.rbac_audit import denied, operator_accesses, unused

PEERING = "kubedistill"


@pytest.mark.parametrize(
    "options",
    [
        RunOptions(peering=PEERING),
        RunOptions(namespaces=[NAMESPACE], peering=PEERING),
        RunOptions(standalone=True),
    ],
    ids=["all-namespaces-with-peering", "one-namespace-with-peering", "standalone"],
)
async def test_every_rule_is_needed_and_every_request_allowed(cluster: Cluster, options: RunOptions) -> None:
    server = cluster.server
    peering = options.peering is not None
    if peering:
        await _create_peering(server, options.clusterwide)
    # A conflict on each create makes the operator read the existing child back (and adopt it).
    for resource in (CONFIGMAPS, RAYJOBS):
        server["create", kmock.resource(resource)][:1] << kmock.KubernetesError(
            status=409, reason="AlreadyExists"
        )
    orphan = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "ghost", "namespace": NAMESPACE, "labels": {"kubedistill.io/job": "ghost"}},
    }

    async with running_operator(server, options):
        await cluster.create_job(job_manifest())
        await eventually(lambda: cluster.condition("Created")["status"] == "True", what="created")
        await cluster.edit_spec({"student": {"model": "Qwen/Qwen3-0.6B", "replicas": 2}})
        await eventually(lambda: cluster.condition("SpecChangeIgnored"), what="the edit handled")
        await eventually(lambda: cluster.events(), what="a Warning event")
        async with server.post(f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs", json=orphan) as response:
            assert response.status == 200
        await eventually(
            lambda: any(r.name == "ghost" and r.method == "GET" for r in server), what="orphan read"
        )
        if peering:
            await eventually(
                lambda: _peering_touched(server, options.clusterwide), what="a peering keep-alive"
            )

    rules = rules_for(clusterwide=options.clusterwide, peering=peering)
    accesses = operator_accesses(server)
    assert not denied(accesses, rules)
    assert not unused(rules, accesses)


async def _create_peering(server: kmock.KubernetesEmulator, clusterwide: bool) -> None:
    body = {"apiVersion": "kopf.dev/v1", "metadata": {"name": PEERING}}
    if clusterwide:
        url = "/apis/kopf.dev/v1/clusterkopfpeerings"
        body["kind"] = "ClusterKopfPeering"
    else:
        url = f"/apis/kopf.dev/v1/namespaces/{NAMESPACE}/kopfpeerings"
        body["kind"] = "KopfPeering"
        body["metadata"]["namespace"] = NAMESPACE
    async with server.post(url, json=body) as response:
        assert response.status == 200


def _peering_touched(server: kmock.KubernetesEmulator, clusterwide: bool) -> bool:
    resource = kmock.resource(CLUSTER_PEERINGS if clusterwide else NAMESPACED_PEERINGS)
    key = (resource, None if clusterwide else NAMESPACE, PEERING)
    return bool(server.objects[key].get("status"))
