"""Colocation: engines sleep unless it is their turn, and the students' optimizer state makes room."""

import json
from pathlib import Path

import pytest
import torch

from kubedistill.api import parse_job
from kubedistill.api.placement import Role
from kubedistill.runtime.cluster.placement import ClusterView, actor_resources
from kubedistill.runtime.engines.transformers.teacher import TransformersTeacher
from kubedistill.runtime.teacher.backend import TeacherBatch
from kubedistill.runtime.trainer.controller import RunOptions, Trainer
from tests.runtime.conftest import TinyWorld, job_manifest

GPU_NODE = ClusterView(gpus=8.0, resources=frozenset({"GPU", "kubedistill_teacher", "kubedistill_student"}))


def test_a_sleeping_engine_refuses_work_until_woken(tiny: TinyWorld) -> None:
    teacher = TransformersTeacher(str(tiny.teacher), torch.float32, torch.device("cpu"))
    batch = TeacherBatch([[5, 6, 7]], [[0, 1]])
    teacher.sleep()
    with pytest.raises(RuntimeError, match="asleep"):
        teacher.hidden_states(batch)
    teacher.wake()
    assert teacher.hidden_states(batch).shape[0] == 2


def test_colocated_engines_take_no_gpu_of_their_own_but_land_on_their_role_nodes() -> None:
    engine = actor_resources(Role.TEACHER, 8.0, GPU_NODE, colocate=True).ray_options()
    assert engine["num_gpus"] == 0.0
    assert engine["resources"] == {"kubedistill_teacher": 8.0}
    assert engine["runtime_env"]["env_vars"]["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] == "1"
    student = actor_resources(Role.STUDENT, 1.0, GPU_NODE, colocate=True).ray_options()
    assert student["num_gpus"] == 1.0 and "runtime_env" not in student


def test_separate_engines_hold_their_own_gpus() -> None:
    engine = actor_resources(Role.TEACHER, 8.0, GPU_NODE).ray_options()
    assert engine["num_gpus"] == 8.0 and "runtime_env" not in engine


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize(
    "mode",
    [
        {},
        {
            "mode": "onPolicy",
            "rollout": {"engines": 1, "batchSize": 16, "maxNewTokens": 8, "backend": "transformers"},
        },
    ],
    ids=["off-policy", "on-policy"],
)
def test_a_colocated_job_wakes_each_engine_for_its_turn_only(
    tiny: TinyWorld, tmp_path: Path, mode: dict
) -> None:
    """The engines start asleep and refuse work while asleep, so the run only completes if every teacher
    and rollout call happens inside that engine's turn."""
    manifest = job_manifest(tiny, "colocated", student={"replicas": 1}, cluster={"colocate": True}, **mode)
    options = RunOptions(
        output_dir=tmp_path, stop_after_steps=2, metrics_port=0, progress=False, print_summary=False
    )
    Trainer(parse_job(manifest), options).run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 2 and all(r["kd_loss"] > 0 for r in train)


def test_an_actors_resources_as_a_placement_group_bundle() -> None:
    separate = actor_resources(Role.TEACHER, 8.0, GPU_NODE)
    assert separate.bundle() == {"CPU": 1.0, "GPU": 8.0, "kubedistill_teacher": 8.0}
    colocated = actor_resources(Role.TEACHER, 8.0, GPU_NODE, colocate=True)
    assert colocated.bundle() == {"CPU": 1.0, "kubedistill_teacher": 8.0}
