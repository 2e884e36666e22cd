"""Every distillation mode end to end, with real Ray actors and FSDP2 ranks: what each mode promises."""

import json
import logging
import math
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from kubedistill.api import parse_job
from kubedistill.runtime.cluster.placement import ClusterView
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.rollout.group import RolloutActorGroup
from kubedistill.runtime.student.batch import MicroBatch
from kubedistill.runtime.student.group import RankWork, StudentActorGroup
from kubedistill.runtime.trainer.controller import RunOptions, Trainer
from tests.runtime.conftest import ONE_RANK, TINY_ROLLOUT, TinyWorld, job_manifest

pytestmark = pytest.mark.usefixtures("ray_session")


def _run(tiny: TinyWorld, output_dir: Path, stop: int | None = None, **spec) -> list[dict]:
    job = parse_job(job_manifest(tiny, "modes-test", **spec))
    options = RunOptions(
        output_dir=output_dir, stop_after_steps=stop, metrics_port=0, progress=False, print_summary=False
    )
    Trainer(job, options).run()
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def _train(history: list[dict]) -> list[dict]:
    return [r for r in history if r["kind"] == "train"]


def test_a_weight_sync_makes_the_rollout_engines_hold_the_students_exact_weights(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    """Both ways weights travel, in turn to the same engines after a step each: as tensors through Ray
    (colocated engines), then over a broadcast group of student rank 0 and the engines (gloo here, NCCL on
    GPUs), which is opened anew for each student group."""
    # The student trains without a teacher here (sft) so one hand-made step moves its weights.
    student_job = parse_job(job_manifest(tiny, "sync-test", mode="sft", teacher=None))
    rollout_job = parse_job(
        job_manifest(tiny, "sync-test", mode="onPolicy", rollout={**TINY_ROLLOUT, "engines": 2})
    )
    cluster = ClusterView.current()
    students = StudentActorGroup(student_job, total_steps=2, cluster=cluster)
    rollout = RolloutActorGroup(rollout_job, cluster)
    sample = Sample(
        input_ids=(5, 6, 7, 8, 9),
        target_mask=(False, False, True, True, True),
        source="t",
        prompt_length=2,
    )
    step = RankWork([MicroBatch.from_samples([sample] * 4, pad_id=0)], [None])
    try:
        for path in ("tensors", "broadcast"):
            if path == "broadcast":
                # A group joined before is replaced, as after a restart of the student ranks.
                students.join_engines(rollout.actors, rollout.tensor_parallel, sglang=False)
                students.join_engines(rollout.actors, rollout.tensor_parallel, sglang=False)
            sync = students.push_weights if path == "tensors" else students.broadcast_weights
            students.train_step([step, step], normalizer=24)
            students.export(str(tmp_path / path))
            trained = load_file(tmp_path / path / "model.safetensors")
            engine = ray.get(rollout.actors[0].named_parameters.remote())
            assert any(not torch.equal(value, trained[name]) for name, value in engine.items()), path

            assert sync(rollout.actors) == sum(v.numel() * 4 for v in engine.values())
            for actor in rollout.actors:
                engine = ray.get(actor.named_parameters.remote())
                for name, value in engine.items():
                    assert torch.equal(value, trained[name]), (path, name)
    finally:
        students.shutdown()
        rollout.shutdown()


def test_on_policy_distillation_trains_on_its_own_samples_and_its_answers_change(
    tiny: TinyWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """...and keeps what it sampled: the newest two rounds' responses in <output>/rollouts/step-N.jsonl, the
    tokens trained, and one response logged for the round of the step that logs a progress line."""
    with caplog.at_level(logging.INFO, logger="kubedistill.runtime.trainer.rollouts"):
        history = _run(
            tiny,
            tmp_path,
            stop=3,
            mode="onPolicy",
            rollout=TINY_ROLLOUT,
            student=ONE_RANK,
            distillation={"kdRatio": 1.0},
            training={"logEverySteps": 2},
            output={"rolloutRounds": 2},
        )
    train = _train(history)
    assert len(train) == 3
    assert all(r["rollout_seconds"] > 0 for r in train), "every step opens a new round (8 prompts x 2 = 16)"
    assert all(r["kd_loss"] > 0 for r in train)
    probes = [r["response"] for r in history if r["kind"] == "probe"]
    assert len(probes) == 3
    assert len(set(probes)) > 1, f"the student's greedy answer never changed: {probes}"

    rollouts = tmp_path / "rollouts"
    assert sorted(path.name for path in rollouts.iterdir()) == ["step-2.jsonl", "step-3.jsonl"]
    for record in train[1:]:
        lines = (rollouts / f"step-{record['step']}.jsonl").read_text().splitlines()
        rounds = [json.loads(line) for line in lines]
        assert len(rounds) == 16 and {r["step"] for r in rounds} == {record["step"]}
        assert sum(r["response_tokens"] for r in rounds) == record["targets"], "the responses trained on"
        assert all(r["prompt"].startswith("<|im_start|>user") and r["response"] for r in rounds)
        assert all(r["response_tokens"] == TINY_ROLLOUT["maxNewTokens"] for r in rounds if r["cut"])
        divergences = [r["kd_divergence"] for r in rounds]
        assert all(d is not None and math.isfinite(d) and d > 0 for d in divergences), divergences
        # Weighted by its tokens, each response's divergence adds up to the step's (kdRatio 1: its loss).
        kd_sum = sum(r["kd_divergence"] * r["response_tokens"] for r in rounds)
        assert kd_sum / record["targets"] == pytest.approx(record["kd_loss"], rel=1e-4)
    (logged,) = [message for message in caplog.messages if message.startswith("rollout for step")]
    assert logged.startswith("rollout for step 2: 16 responses, ")


def test_self_distillation_syncs_the_teacher_every_n_steps(tiny: TinyWorld, tmp_path: Path) -> None:
    """The teacher starts as the student and takes its weights after steps 3 and 6: where they are the same
    model, the divergence is zero."""
    history = _run(
        tiny,
        tmp_path,
        mode="selfDistillation",
        teacher={"model": None, "backend": "transformers"},
        student=ONE_RANK,
        distillation={"teacherUpdateFreq": 3},
    )
    kd = [r["kd_loss"] for r in _train(history)]
    assert len(kd) == 6
    assert kd[0] < 1e-6 and kd[3] < 1e-6, kd
    assert min(kd[1], kd[2], kd[4], kd[5]) > 1e-5, kd


def test_self_distillation_with_an_ema_teacher_lags_behind_the_student(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    history = _run(
        tiny,
        tmp_path,
        stop=4,
        mode="selfDistillation",
        teacher={"model": None, "backend": "transformers"},
        student=ONE_RANK,
        distillation={"teacherEmaDecay": 0.5},
    )
    kd = [r["kd_loss"] for r in _train(history)]
    assert kd[0] < 1e-6, "the teacher starts as the student"
    assert all(value > 1e-6 for value in kd[1:]), "an average of past weights is never the current student"


def _straight(straight_run: Path) -> list[dict]:
    """The shared reference run (fixed micro-batches of 4, vanilla KD, 6 steps)."""
    return [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]


def test_padded_dynamic_batching_trains_the_same_model_as_packed_fixed_micro_batches(
    tiny: TinyWorld, straight_run: Path, tmp_path: Path
) -> None:
    """Micro-batches formed by a token budget, and padded rows instead of packed ones (the reference run packs
    its micro-batches of 4, `training.packing`'s default), change the work per forward, not the gradient of
    the step."""
    dynamic = _run(tiny, tmp_path, stop=2, training={"maxTokensPerDevice": 96, "packing": False})
    fixed = _train(_straight(straight_run))[:2]
    assert [r["loss"] for r in _train(dynamic)] == pytest.approx([r["loss"] for r in fixed], abs=1e-5)


def test_a_loss_from_a_plugin_package_trains(tiny: TinyWorld, tmp_path: Path) -> None:
    history = _run(
        tiny,
        tmp_path,
        stop=3,
        student=ONE_RANK,
        distillation={"loss": "squaredProbabilityDistance", "kdRatio": 1.0},
    )
    kd = [r["kd_loss"] for r in _train(history)]
    assert len(kd) == 3 and all(value > 0 for value in kd)


def test_an_algorithm_from_a_plugin_package_is_used(
    tiny: TinyWorld, straight_run: Path, tmp_path: Path
) -> None:
    half = _run(tiny, tmp_path, stop=1, distillation={"algorithm": "halfVanilla"})
    vanilla = _train(_straight(straight_run))[0]
    assert _train(half)[0]["loss"] == pytest.approx(0.5 * vanilla["loss"], rel=1e-6)
