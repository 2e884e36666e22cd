"""Replicas of the operator in one kopf peering (the chart with `replicaCount > 1`): exactly one acts, and
another takes over when it dies. Real `kubedistill operator` processes against the emulated API server."""

from pathlib import Path

import kmock

from tests.operator.harness import (
    CLUSTER_PEERINGS,
    CliOperator,
    Cluster,
    cli_operators,
    eventually,
    job_manifest,
)

PEERING = "kubedistill"
LIFETIME_SECONDS = 3
"""A short peering lifetime (the chart's default is kopf's 60 s) bounds the takeover in the test."""


def _peers(cluster: Cluster) -> dict[str, dict[str, object]]:
    return cluster.stored(CLUSTER_PEERINGS, PEERING, namespace=None).get("status") or {}


def _created_by(operator: CliOperator, name: str) -> bool:
    return f"RayJob {name}: created" in operator.output()


async def test_one_replica_of_two_acts_and_the_other_takes_over_when_it_is_killed(
    cluster: Cluster, tmp_path: Path
) -> None:
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING}}
    async with cluster.server.post("/apis/kopf.dev/v1/clusterkopfpeerings", json=peering) as response:
        assert response.status == 200  # the chart's peering.yaml
    args = ["--all-namespaces", f"--peering={PEERING}"]
    lifetime = {"KUBEDISTILL_PEERING_LIFETIME_SECONDS": str(LIFETIME_SECONDS)}
    async with cli_operators(
        cluster.server, tmp_path, ["operator-a", "operator-b"], args, **lifetime
    ) as replicas:
        await eventually(lambda: len(_peers(cluster)) == 2, timeout=60, what="both replicas in the peering")
        peers = _peers(cluster)
        assert len({peer["priority"] for peer in peers.values()}) == 2, "each replica has its own priority"
        active_name = max(peers, key=lambda name: peers[name]["priority"])
        active, standby = sorted(replicas, key=lambda replica: replica.name != active_name)

        await cluster.create_job(job_manifest("first"))
        await eventually(lambda: cluster.rayjob("first"), timeout=30, what="the first job's RayJob")
        await eventually(lambda: _created_by(active, "first"), what="the active replica's log of it")
        assert "Handler" not in standby.output(), "the paused replica handled events too"

        active.kill()
        await cluster.create_job(job_manifest("second"))
        await eventually(
            lambda: cluster.rayjob("second"), timeout=LIFETIME_SECONDS + 20, what="the standby taking over"
        )

    assert _created_by(standby, "second")
    assert "Resuming operations after the pause" in standby.output()
    assert cluster.condition("Created", "first")["status"] == "True"
    rayjob = cluster.server.objects[kmock.resource("ray.io/v1/rayjobs"), "ml", "first"]
    assert None not in rayjob.history, "the first RayJob was deleted or created twice"
