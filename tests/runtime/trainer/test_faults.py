"""The trainer under faults, with real actors killed mid-run: nothing lost, nothing repeated, same result."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from kubedistill.api import parse_job
from kubedistill.runtime.student.worker import NonFiniteLoss
from kubedistill.runtime.trainer.controller import RunOptions, StepEvent, Trainer
from kubedistill.runtime.trainer.groups import Groups
from tests.runtime.conftest import ON_POLICY, ONE_RANK, STRAIGHT_CHECKPOINTS, TinyWorld, job_manifest

pytestmark = pytest.mark.usefixtures("ray_session")


def _trainer(
    tiny: TinyWorld, output: Path, on_step: Callable[[StepEvent], None] | None = None, **spec
) -> Trainer:
    manifest = job_manifest(tiny, "trainer-test", **spec)
    return Trainer(
        parse_job(manifest),
        RunOptions(output_dir=output, metrics_port=0, progress=False, print_summary=False, on_step=on_step),
    )


def strike_once(at_step: int, strike: Callable[[Groups], None]) -> Callable[[StepEvent], None]:
    """An `on_step` hook that strikes the groups once, right after step `at_step` (and its checkpoint)."""
    struck: list[int] = []

    def hook(event: StepEvent) -> None:
        if event.state.step == at_step and not struck:
            struck.append(at_step)
            strike(event.groups)

    return hook


def kill_student_rank(rank: int) -> Callable[[Groups], None]:
    return lambda groups: ray.kill(groups.students.actors[rank], no_restart=True)


def kill_teacher(groups: Groups) -> None:
    ray.kill(groups.teacher.actors[0], no_restart=True)


def _assert_same_weights(run: Path, reference: Path) -> None:
    expected = load_file(reference / "model.safetensors")
    actual = load_file(run / "model.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=1e-6, msg=name)


def test_a_student_rank_killed_mid_run_resumes_from_the_checkpoint_and_ends_like_an_uninterrupted_run(
    tiny: TinyWorld, straight_run: Path, tmp_path: Path
) -> None:
    checkpoints = tmp_path / "ckpt"
    strike = strike_once(3, kill_student_rank(1))
    trainer = _trainer(tiny, tmp_path, strike, checkpoint={"path": str(checkpoints), **STRAIGHT_CHECKPOINTS})
    summary = trainer.run().summary
    assert [r["error"] for r in summary["recoveries"]] == ["ActorDiedError"]
    assert summary["recoveries"][0]["step"] == 3, "training went on from the step-3 checkpoint"
    assert summary["steps"] == 6
    _assert_same_weights(tmp_path, straight_run)


def test_a_teacher_killed_mid_run_is_restarted_and_the_step_retried_with_no_sample_lost_or_repeated(
    tiny: TinyWorld, straight_run: Path, tmp_path: Path
) -> None:
    summary = _trainer(tiny, tmp_path, strike_once(2, kill_teacher)).run().summary
    assert [r["error"] for r in summary["recoveries"]] == ["TeacherUnavailable"]
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    straight = [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in history if r["kind"] == "train"] == pytest.approx(
        [r["loss"] for r in straight if r["kind"] == "train"], abs=1e-6
    )
    _assert_same_weights(tmp_path, straight_run)


def test_on_policy_after_a_student_rank_is_killed_the_engine_takes_the_checkpoints_weights_over_a_new_group(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    """The rollout engine outlives the student ranks and holds step 3's weights when they die; the restarted
    ranks open a new broadcast group with it and send it the step-2 checkpoint's weights, so it samples what
    it would have sampled without the fault. The rank killed is rank 0 of one, the end of that group."""

    def run(output: Path, strike: bool) -> list[dict]:
        checkpoints = output / "ckpt"
        manifest = job_manifest(
            tiny,
            "trainer-test",
            **ON_POLICY,
            student=ONE_RANK,
            checkpoint={"path": str(checkpoints), "everySteps": 2},
        )
        options = RunOptions(
            output_dir=output,
            stop_after_steps=4,
            metrics_port=0,
            progress=False,
            print_summary=False,
            on_step=strike_once(3, kill_student_rank(0)) if strike else None,
        )
        summary = Trainer(parse_job(manifest), options).run().summary
        if strike:
            assert [(r["step"], r["error"]) for r in summary["recoveries"]] == [(2, "ActorDiedError")]
        history = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
        return [r for r in history if r["kind"] == "train"]

    straight = run(tmp_path / "straight", strike=False)
    struck = run(tmp_path / "struck", strike=True)
    assert [r["step"] for r in struck][-2:] == [3, 4]
    assert [r["loss"] for r in struck][-2:] == pytest.approx([r["loss"] for r in straight][-2:], abs=1e-6)
    # The rounds after the checkpoint are sampled again from its weights, as the straight run sampled them.
    kept = {run: sorted((tmp_path / run / "rollouts").iterdir()) for run in ("straight", "struck")}
    assert [path.name for path in kept["struck"]] == [f"step-{step}.jsonl" for step in (1, 2, 3, 4)]
    assert [path.read_text() for path in kept["struck"][:3]] == [
        path.read_text() for path in kept["straight"][:3]
    ]


def test_failures_beyond_the_backoff_limit_fail_the_run(tiny: TinyWorld, tmp_path: Path) -> None:
    trainer = _trainer(tiny, tmp_path, strike_once(1, kill_teacher), backoffLimit=0, student=ONE_RANK)
    with pytest.raises(Exception, match="teacher hidden states could not be read"):
        trainer.run()


def test_a_non_finite_loss_is_skipped_and_counted_when_asked(tiny: TinyWorld, tmp_path: Path) -> None:
    trainer = _trainer(
        tiny,
        tmp_path,
        student=ONE_RANK,
        distillation={"loss": "alwaysNan"},
        training={"onNonFinite": "skip"},
    )
    trainer.options = RunOptions(
        output_dir=tmp_path, stop_after_steps=2, metrics_port=0, progress=False, print_summary=False
    )
    summary = trainer.run().summary
    assert summary["skipped_steps"] == 2
    _assert_same_weights(tmp_path, tiny.student)


def test_a_non_finite_loss_fails_the_run_by_default_and_writes_no_checkpoint(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    checkpoints = tmp_path / "ckpt"
    trainer = _trainer(
        tiny,
        tmp_path,
        student=ONE_RANK,
        distillation={"loss": "alwaysNan"},
        checkpoint={"path": str(checkpoints), "everySteps": 2},
    )
    with pytest.raises(NonFiniteLoss, match=r"spec\.training\.onNonFinite is fail"):
        trainer.run()
    assert not list(checkpoints.glob("step-*"))
