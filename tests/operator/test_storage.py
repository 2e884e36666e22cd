"""Which paths of a job lie on no volume of its pods, decided from the spec and the rendered RayJob."""

from typing import Any

import pytest

from kubedistill.operator.render import render_rayjob
from kubedistill.operator.settings import RenderSettings
from kubedistill.operator.storage import misplaced_paths, storage_status
from tests.operator.manifests import small_job

PVC = {"persistentVolumeClaim": {"claimName": "shared"}}


def misplaced(spec: dict[str, Any], mounts: dict[str, dict[str, Any]]) -> list[str]:
    """The fields reported for this spec with these volumes mounted (mountPath -> volume source)."""
    volumes = [{"name": f"v{i}", **source} for i, source in enumerate(mounts.values())]
    volume_mounts = [{"name": f"v{i}", "mountPath": path} for i, path in enumerate(mounts)]
    hub = {"teacher": {"model": "Qwen/Qwen3-8B"}, "student": {"model": "Qwen/Qwen3-0.6B"}}
    cluster = {"cluster": {"volumes": volumes, "volumeMounts": volume_mounts}}
    job = small_job({**hub, **cluster, **spec})
    return [problem.field for problem in misplaced_paths(job, render_rayjob(job, RenderSettings("img")))]


@pytest.mark.parametrize(
    ("spec", "mounts", "fields"),
    [
        ({}, {"/data": PVC}, []),
        ({}, {}, ["spec.data.train.path"]),
        ({"student": {"model": "/models/student"}}, {"/data": PVC}, ["spec.student.model"]),
        ({"student": {"model": "/models/student"}}, {"/data": PVC, "/models": PVC}, []),
        (
            {"teacher": {"model": "/mnt/models-old/t"}},
            {"/data": PVC, "/mnt/models": PVC},
            ["spec.teacher.model"],
        ),
        ({"teacher": {"model": "s3://bucket/teacher"}}, {"/data": PVC}, []),
        ({"data": {"train": {"path": "train.jsonl"}}}, {"/data": PVC}, ["spec.data.train.path"]),
        (
            {"data": {"train": {"path": "/data/t.jsonl"}, "eval": {"path": "/eval/e.jsonl"}}},
            {"/data": PVC},
            ["spec.data.eval.path"],
        ),
        (
            {
                "data": {
                    "mixture": [{"path": "/data/a.jsonl", "weight": 1}, {"path": "/b/b.jsonl", "weight": 1}]
                }
            },
            {"/data": PVC},
            ["spec.data.mixture[1].path"],
        ),
        ({"checkpoint": {"path": "/ckpt"}}, {"/data": PVC}, ["spec.checkpoint.path"]),
        (
            {"checkpoint": {"path": "/scratch/ckpt"}},
            {"/data": PVC, "/scratch": {"emptyDir": {}}},
            ["spec.checkpoint.path"],
        ),
        ({"output": {"path": "/data/out"}}, {"/data": PVC}, []),
        ({"output": {"path": "/dev/shm/out"}}, {"/data": PVC}, ["spec.output.path"]),
        ({"student": {"model": "/scratch/s"}}, {"/data": PVC, "/scratch": {"emptyDir": {}}}, []),
        (
            {
                "teacher": None,
                "teachers": [{"model": "/mnt/models/a"}, {"model": "/b/b", "tokenizer": "/b/tokenizer"}],
            },
            {"/data": PVC, "/mnt/models": PVC},
            ["spec.teachers[1].model", "spec.teachers[1].tokenizer"],
        ),
    ],
    ids=[
        "data-on-a-claim",
        "data-on-no-volume",
        "model-path-on-no-volume",
        "model-path-on-a-claim",
        "a-mount-path-is-not-a-prefix-of-a-sibling",
        "urls-are-not-paths",
        "a-relative-data-path-is-in-the-image",
        "eval-data-too",
        "every-source-of-a-mixture",
        "checkpoints-on-no-volume",
        "checkpoints-on-an-emptydir-go-with-the-pod",
        "output-on-a-claim",
        "output-on-shared-memory-goes-with-the-pod",
        "models-may-be-read-from-an-emptydir",
        "every-teacher-of-several",
    ],
)
def test_paths_on_no_lasting_volume_are_named_by_field(
    spec: dict[str, Any], mounts: dict[str, dict[str, Any]], fields: list[str]
) -> None:
    assert misplaced(spec, mounts) == fields


def test_hub_ids_are_not_paths() -> None:
    spec = {"teacher": {"model": "Qwen/Qwen3-8B", "tokenizer": "Qwen/Qwen3-8B"}, "student": {"model": "gpt2"}}
    assert misplaced(spec, {"/data": PVC}) == []


def test_the_condition_names_every_field_and_is_absent_when_all_is_well() -> None:
    job = small_job(
        {"mode": "sft", "teacher": None, "student": {"model": "/models/s"}, "checkpoint": {"path": "/ckpt"}}
    )
    problems = misplaced_paths(job, render_rayjob(job, RenderSettings("img")))
    status = storage_status({}, problems, generation=1, now="2026-12-01T00:00:00Z")
    (condition,) = status["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "EphemeralStorage",
        "True",
        "PathNotOnVolume",
    )
    for field in ("spec.student.model", "spec.data.train.path", "spec.checkpoint.path"):
        assert field in condition["message"]
    assert storage_status({"phase": "Pending"}, [], generation=1, now="t") == {"phase": "Pending"}
