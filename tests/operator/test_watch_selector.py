"""The operator asks the API server for its own RayJobs only: a cluster's other RayJobs never reach it."""

import kmock

from tests.operator.harness import RAYJOBS, Cluster, eventually, job_manifest, running_operator
from tests.operator.kmock_adapter import Action


async def test_rayjobs_are_listed_and_watched_by_the_jobs_label_on_the_server(cluster: Cluster) -> None:
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await eventually(lambda: cluster.status().get("rayJobName") == "demo", what="the job created")

    reads = [
        request
        for request in cluster.requests()
        if request.resource == kmock.resource(RAYJOBS)
        and request.action in (Action.LIST, Action.WATCH)
        and request.headers.get("User-Agent", "").startswith("kopf/")
    ]
    assert reads, "kopf listed and watched RayJobs"
    assert {request.params.get("labelSelector") for request in reads} == {"kubedistill.io/job"}
