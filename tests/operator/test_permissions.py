"""A child the API server forbids the operator to create fails the job once, naming the missing permission."""

import asyncio

import kmock

from kubedistill.operator.rbac import RULES
from tests.operator.apiserver import OwnerReferencesPermissionEnforcement
from tests.operator.harness import (
    CONFIGMAPS,
    FAST_SETTINGS,
    Cluster,
    eventually,
    job_manifest,
    running_operator,
)


async def test_without_update_on_the_jobs_finalizers_the_job_fails_naming_that_permission(
    cluster: Cluster,
) -> None:
    # A Role from before the rule existed, on a cluster enforcing owner-reference permissions (OpenShift).
    without = [rule for rule in RULES if rule.resource != "distillationjobs/finalizers"]
    cluster.server.interceptors[:] = [OwnerReferencesPermissionEnforcement(without)]
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await eventually(lambda: cluster.status().get("phase") == "Failed", what="phase Failed")
        await asyncio.sleep(3 * FAST_SETTINGS.retry_delay_seconds)  # room for retries that must not come

    failed = cluster.condition("Failed")
    assert (failed["status"], failed["reason"]) == ("True", "Forbidden")
    assert "needs update on distillationjobs/finalizers (API group kubedistill.io)" in failed["message"]
    assert "cannot set blockOwnerDeletion" in failed["message"], "the API server's own words are kept"
    creates = [
        r for r in cluster.requests() if r.method == "POST" and r.resource == kmock.resource(CONFIGMAPS)
    ]
    assert len(creates) == 1, "a forbidden create is not retried"
    assert [e["reason"] for e in cluster.events() if e["type"] == "Warning"] == ["Forbidden"]
    assert cluster.config_map() is None and cluster.rayjob() is None


async def test_with_the_charts_rules_children_are_admitted_on_such_a_cluster(cluster: Cluster) -> None:
    # The `cluster` fixture enforces owner-reference permissions for the operator's own RULES.
    async with running_operator(cluster.server):
        await cluster.create_job(job_manifest())
        await eventually(lambda: cluster.condition("Created")["status"] == "True", what="the job created")

    for child in (cluster.config_map(), cluster.rayjob()):
        assert child["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
