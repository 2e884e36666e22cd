"""Colocation: engines sleep unless it is their turn, what the students hold on the GPU makes room, and one
turn of the teacher may score several steps."""

from pathlib import Path
from typing import Any

import pytest
import torch

from kubedistill.api import parse_job
from kubedistill.api.placement import Role
from kubedistill.runtime.cluster.placement import ClusterView, actor_resources
from kubedistill.runtime.engines.transformers.teacher import TransformersTeacher
from kubedistill.runtime.student.offload import StudentState
from kubedistill.runtime.teacher.backend import TeacherBatch
from kubedistill.runtime.trainer.colocation import steps_of_a_wake, student_offload
from kubedistill.runtime.trainer.controller import RunOptions, RunResult, Trainer
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


def _colocated_run(tiny: TinyWorld, out: Path, steps: int, **changes: Any) -> RunResult:
    manifest = job_manifest(tiny, "colocated", student={"replicas": 1}, cluster={"colocate": True}, **changes)
    options = RunOptions(
        output_dir=out, stop_after_steps=steps, metrics_port=0, progress=False, print_summary=False
    )
    return Trainer(parse_job(manifest), options).run()


def _train_losses(run: RunResult) -> list[float]:
    return [r["loss"] for r in run.records() if r["kind"] == "train"]


@pytest.fixture(scope="module")
def off_policy_runs(
    tiny: TinyWorld, tmp_path_factory: pytest.TempPathFactory, ray_session: None
) -> dict[int, RunResult]:
    """The colocated off-policy job, 3 steps, by spec.teacher.stepsPerWake: 1, and 2 with a checkpoint after
    every step (the first made inside the wake of steps 1 and 2)."""
    del ray_session
    one = _colocated_run(tiny, tmp_path_factory.mktemp("wake-1"), 3)
    out = tmp_path_factory.mktemp("wake-2")
    checkpoint = {"path": str(out / "checkpoints"), "everySteps": 1}
    two = _colocated_run(tiny, out, 3, teacher={"stepsPerWake": 2}, checkpoint=checkpoint)
    return {1: one, 2: two}


def test_a_colocated_job_wakes_the_teacher_for_each_step_only(off_policy_runs: dict[int, RunResult]) -> None:
    """The engines start asleep and refuse work while asleep, so the run only completes if every teacher
    call happens inside its turn."""
    run = off_policy_runs[1]
    assert len(_train_losses(run)) == 3
    assert all(r["kd_loss"] > 0 for r in run.records() if r["kind"] == "train")
    assert run.summary["wakes"] == {"teacher": 3}


def test_one_wake_scoring_two_steps_trains_the_losses_of_one_wake_a_step(
    off_policy_runs: dict[int, RunResult],
) -> None:
    """Two steps' hidden states wait in the object store while the first trains (and is checkpointed); the
    third step, past the wake's two, has one of its own (training stops there)."""
    assert _train_losses(off_policy_runs[2]) == pytest.approx(_train_losses(off_policy_runs[1]), rel=1e-6)
    assert off_policy_runs[2].summary["wakes"] == {"teacher": 2}


@pytest.mark.usefixtures("ray_session")
def test_a_colocated_on_policy_job_wakes_each_engine_for_its_turn_only(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    """A rollout round is one step here (16 responses, a global batch of 16): each step's wake ends at its
    round's end, however many steps a wake may score, since the next round samples from the new weights."""
    rollout = {"engines": 1, "batchSize": 16, "maxNewTokens": 8, "backend": "transformers"}
    run = _colocated_run(tiny, tmp_path, 2, mode="onPolicy", rollout=rollout, teacher={"stepsPerWake": 2})
    train = [r for r in run.records() if r["kind"] == "train"]
    assert len(train) == 2 and all(r["kd_loss"] > 0 for r in train)
    # Each step: its round sampled, then after it the rollout engines' turn with the new weights (the probe).
    assert run.summary["wakes"] == {"teacher": 2, "rollout": 4}


def test_an_actors_resources_as_a_placement_group_bundle() -> None:
    separate = actor_resources(Role.TEACHER, 8.0, GPU_NODE)
    assert separate.bundle() == {"CPU": 1.0, "GPU": 8.0, "kubedistill_teacher": 8.0}
    colocated = actor_resources(Role.TEACHER, 8.0, GPU_NODE, colocate=True)
    assert colocated.bundle() == {"CPU": 1.0, "kubedistill_teacher": 8.0}


def _wake(first: int, steps_per_wake: int, stop: int = 100, new_weights_every: int = 1000) -> list[int]:
    """steps_of_a_wake over plain step numbers (the state a step starts from)."""
    return steps_of_a_wake(
        first,
        steps_per_wake,
        lambda step: step < stop,
        lambda step: step + 1,
        lambda step: step % new_weights_every == 0,
    )


@pytest.mark.parametrize(
    ("first", "steps_per_wake", "stop", "new_weights_every", "steps"),
    [
        (0, 1, 100, 1000, [0]),
        (0, 4, 100, 1000, [0, 1, 2, 3]),
        # A run resumed from a checkpoint inside a wake starts a wake of its own there.
        (5, 4, 100, 1000, [5, 6, 7, 8]),
        (0, 4, 3, 1000, [0, 1, 2]),
        # Engines take new weights after step 2 (the state it reaches, 2): step 2 waits for its own wake.
        (0, 4, 100, 2, [0, 1]),
        (2, 4, 100, 2, [2, 3]),
        (0, 4, 100, 1, [0]),
    ],
)
def test_a_wake_scores_up_to_steps_per_wake_steps_ending_at_new_weights_and_at_the_stop(
    first: int, steps_per_wake: int, stop: int, new_weights_every: int, steps: list[int]
) -> None:
    assert _wake(first, steps_per_wake, stop, new_weights_every) == steps


def test_everything_a_student_keeps_on_the_gpu_leaves_it_for_an_engines_turn() -> None:
    assert student_offload(cpu_offload=False) == {
        StudentState.PARAMETERS,
        StudentState.TEACHER_HEAD,
        StudentState.OPTIMIZER_STATE,
    }
    # FSDP2's CPU offload keeps the shards and the optimizer state on the CPU already.
    assert student_offload(cpu_offload=True) == {StudentState.TEACHER_HEAD}
