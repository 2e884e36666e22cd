"""The API server emulator behaves as kube-apiserver documents it, where the operator relies on it."""

import asyncio
import json
from typing import Any

import pytest

from tests.operator import structural
from tests.operator.harness import JOBS, NAMESPACE, RAYJOBS, Cluster, job_manifest

URL = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs"


def _rayjob(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name, "labels": labels}}


async def _create(cluster: Cluster, obj: dict[str, Any]) -> None:
    async with cluster.server.post(URL, json=obj) as response:
        assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("team", {"a", "b"}),
        ("!team", {"c"}),
        ("team=ml", {"a"}),
        ("team==ml", {"a"}),
        ("team!=ml", {"b", "c"}),
        ("team in (ml,infra)", {"a", "b"}),
        ("team notin (ml)", {"b", "c"}),
        ("team,tier=gpu", {"b"}),
        ("", {"a", "b", "c"}),
    ],
)
async def test_a_list_returns_only_what_its_label_selector_selects(
    cluster: Cluster, selector: str, names: set[str]
) -> None:
    for obj in (_rayjob("a", team="ml"), _rayjob("b", team="infra", tier="gpu"), _rayjob("c")):
        await _create(cluster, obj)
    async with cluster.server.get(URL, params={"labelSelector": selector}) as response:
        listed = await response.json()
    assert {item["metadata"]["name"] for item in listed["items"]} == names


async def test_a_watch_with_a_label_selector_sees_an_object_that_stops_matching_as_deleted(
    cluster: Cluster,
) -> None:
    await _create(cluster, _rayjob("a", team="ml"))
    await _create(cluster, _rayjob("b"))
    params = {"watch": "true", "labelSelector": "team"}
    async with cluster.server.get(URL, params=params) as stream:
        events = [json.loads(await stream.content.readline())]
        await asyncio.sleep(0.1)  # kmock subscribes the stream to changes only after its initial listing
        await cluster.patch(RAYJOBS, "a", {"metadata": {"labels": {"team": None}}})
        await cluster.patch(RAYJOBS, "b", {"metadata": {"labels": {"team": "infra"}}})
        for _ in range(2):
            events.append(json.loads(await asyncio.wait_for(stream.content.readline(), 5)))
    assert [(event["type"], event["object"]["metadata"]["name"]) for event in events] == [
        ("ADDED", "a"),
        ("DELETED", "a"),
        ("ADDED", "b"),
    ]


async def test_a_delete_of_an_object_with_finalizers_only_marks_it_until_they_are_removed(
    cluster: Cluster,
) -> None:
    # https://kubernetes.io/docs/concepts/overview/working-with-objects/finalizers/
    await _create(cluster, {**_rayjob("a"), "metadata": {"name": "a", "finalizers": ["example.com/hold"]}})
    await cluster.delete_rayjob("a")
    marked = cluster.rayjob("a")
    assert marked is not None and marked["metadata"]["deletionTimestamp"]

    await cluster.patch(RAYJOBS, "a", {"metadata": {"finalizers": []}})
    assert cluster.rayjob("a") is None


JOB_URL = f"/apis/kubedistill.io/v1alpha1/namespaces/{NAMESPACE}/distillationjobs"


async def _create_job(cluster: Cluster, **fields: Any) -> None:
    async with cluster.server.post(JOB_URL, json={**job_manifest("j"), **fields}) as response:
        assert response.status == 200, await response.text()


async def test_the_status_subresource_keeps_status_and_the_rest_of_the_object_apart(cluster: Cluster) -> None:
    await _create_job(cluster, status={"phase": "Succeeded"})
    assert "status" not in cluster.job("j"), "a create ignores status"

    await cluster.patch(JOBS, "j", {"spec": {"suspend": True}, "status": {"phase": "Failed"}})
    assert (cluster.job("j")["spec"]["suspend"], cluster.job("j").get("status")) == (True, None)

    patch = {"spec": {"suspend": False}, "status": {"phase": "Running"}}
    await cluster.patch(JOBS, "j", patch, subresource="status")
    assert (cluster.job("j")["spec"]["suspend"], cluster.job("j")["status"]) == (True, {"phase": "Running"})


async def test_generation_moves_only_when_the_spec_changes_and_every_write_bumps_the_resource_version(
    cluster: Cluster,
) -> None:
    await _create_job(cluster)
    versions = [cluster.job("j")["metadata"]["resourceVersion"]]
    for patch, subresource, generation in [
        ({"spec": {"suspend": True}}, "", 2),
        ({"spec": {"suspend": True}}, "", 2),  # the same spec again
        ({"metadata": {"labels": {"x": "y"}}}, "", 2),
        ({"status": {"phase": "Running"}}, "status", 2),
        ({"spec": {"suspend": False}}, "", 3),
    ]:
        await cluster.patch(JOBS, "j", patch, subresource=subresource)
        metadata = cluster.job("j")["metadata"]
        assert metadata["generation"] == generation, patch
        versions.append(metadata["resourceVersion"])
    assert len(set(versions)) == len(versions)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"student": {"model": "Qwen/Qwen3-0.6B", "replicas": 0}}, "student.replicas"),
        ({"mode": "sometimes"}, "mode"),
        ({"mode": "onPolicy"}, "required when spec.mode is onPolicy"),  # a CEL rule
    ],
)
async def test_a_job_the_crds_schema_rejects_is_answered_422_naming_the_field(
    cluster: Cluster, spec: dict[str, Any], field: str
) -> None:
    manifest = job_manifest("j")
    async with cluster.server.post(
        JOB_URL, json={**manifest, "spec": {**manifest["spec"], **spec}}
    ) as response:
        assert response.status == 422
        assert field in (await response.json())["message"]
    assert cluster.job("j") is None


async def test_fields_the_crds_schema_does_not_know_are_pruned_on_create_and_update(cluster: Cluster) -> None:
    manifest = job_manifest("j")
    await _create_job(cluster, spec={**manifest["spec"], "typo": 1}, extra={"x": 1})
    assert "typo" not in cluster.job("j")["spec"] and "extra" not in cluster.job("j")

    await cluster.patch(JOBS, "j", {"spec": {"teacher": {"model": "Qwen/Qwen3-8B", "typo": 2}}})
    assert cluster.job("j")["spec"]["teacher"] == {"model": "Qwen/Qwen3-8B"}


async def test_children_are_garbage_collected_when_their_owner_is_deleted(cluster: Cluster) -> None:
    await _create_job(cluster)
    uid = cluster.job("j")["metadata"]["uid"]
    owner = {"apiVersion": "kubedistill.io/v1alpha1", "kind": "DistillationJob", "name": "j", "uid": uid}
    await _create(cluster, {**_rayjob("child"), "metadata": {"name": "child", "ownerReferences": [owner]}})
    await _create(cluster, _rayjob("unowned"))

    await cluster.delete_job("j")
    assert cluster.rayjob("child") is None
    assert cluster.rayjob("unowned") is not None


async def test_a_resource_discovery_does_not_show_is_not_found(cluster: Cluster) -> None:
    del cluster.server.resources[RAYJOBS]
    async with cluster.server.post(URL, json=_rayjob("a")) as response:
        assert response.status == 404
    async with cluster.server.get("/apis/ray.io/v1") as response:
        assert response.status == 404


def test_defaults_fill_what_is_missing_and_pruning_keeps_what_the_schema_preserves() -> None:
    # The generated CRD declares no defaults (the operator applies the pydantic ones): one of its shape.
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "replicas": {"type": "integer", "default": 1},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            }
        },
    }
    stored = structural.pruned_and_defaulted({"spec": {"free": {"any": 1}, "typo": 2}, "x": 3}, schema)
    assert stored == {"spec": {"free": {"any": 1}, "replicas": 1}}


async def _watch(cluster: Cluster, since: str, count: int) -> list[dict[str, Any]]:
    params = {"watch": "true", "resourceVersion": since}
    async with cluster.server.get(URL, params=params) as stream:
        return [json.loads(await asyncio.wait_for(stream.content.readline(), 5)) for _ in range(count)]


async def _list_version(cluster: Cluster) -> str:
    async with cluster.server.get(URL) as response:
        return (await response.json())["metadata"]["resourceVersion"]


def _seen(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["type"], event["object"]["metadata"]["name"]) for event in events]


async def test_a_watch_from_a_lists_resource_version_sees_only_what_changed_after_it(
    cluster: Cluster,
) -> None:
    # https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes
    await _create(cluster, _rayjob("a"))
    await _create(cluster, _rayjob("b"))
    listed = await _list_version(cluster)
    await cluster.patch(RAYJOBS, "a", {"metadata": {"labels": {"team": "ml"}}})
    await _create(cluster, _rayjob("c"))
    assert _seen(await _watch(cluster, listed, 2)) == [("MODIFIED", "a"), ("ADDED", "c")]


async def test_a_watch_resumed_from_an_older_version_replays_every_change_after_it_in_order(
    cluster: Cluster,
) -> None:
    await _create(cluster, _rayjob("a"))
    created = await _list_version(cluster)
    await cluster.patch(RAYJOBS, "a", {"metadata": {"labels": {"team": "ml"}}})
    await cluster.delete_rayjob("a")
    events = await _watch(cluster, created, 2)
    assert _seen(events) == [("MODIFIED", "a"), ("DELETED", "a")]
    versions = [int(event["object"]["metadata"]["resourceVersion"]) for event in events]
    assert int(created) < versions[0] < versions[1], "a deletion is a write with a resourceVersion of its own"


async def test_a_watch_from_before_the_servers_window_gets_410_gone_in_the_stream(cluster: Cluster) -> None:
    cluster.server.watch_history = 2
    await _create(cluster, _rayjob("a"))
    first = await _list_version(cluster)
    for name in ("b", "c", "d"):
        await _create(cluster, _rayjob(name))
    [event] = await _watch(cluster, first, 1)
    assert event["type"] == "ERROR"
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
    # Within the window, the same server still resumes.
    assert _seen(await _watch(cluster, str(int(first) + 2), 1)) == [("ADDED", "d")]
