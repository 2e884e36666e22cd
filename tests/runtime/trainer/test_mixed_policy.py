"""Mixing on- and off-policy steps (spec.rollout.lmbda, TRL GKD's lmbda): which steps train on the student's
own samples and what those samples are. A mixed job runs end to end on local Ray in test_tracking_run.py,
where it feeds the experiment trackers too."""

from typing import cast

import numpy as np
import pytest

from kubedistill.api.job import SpecError, parse_job
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.rollout.backend import SamplingConfig
from kubedistill.runtime.rollout.group import RolloutActorGroup
from kubedistill.runtime.trainer.sources import (
    DatasetBatches,
    MixedBatches,
    epoch_steps,
    on_policy_step,
    prompt_of,
    prompts_left_out,
)
from tests.api.manifests import BASE, ON_POLICY_ROLLOUT, apply_changes

MIXED = {
    "spec.mode": "onPolicy",
    "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 2, "samplesPerPrompt": 2, "lmbda": 0.5},
    "spec.training.globalBatchSize": 4,
    "spec.training.seed": 7,
    "spec.student.replicas": 1,
}
"""Rounds of 2 prompts x 2 samples: one global batch of 4, so one round per on-policy step."""


# -- which steps are on-policy ------------------------------------------------------------------------------


@pytest.mark.parametrize("lmbda", [0.1, 0.5, 0.9])
def test_the_share_of_on_policy_steps_is_lmbda(lmbda: float) -> None:
    decisions = [on_policy_step(7, epoch, step, lmbda) for epoch in range(40) for step in range(100)]
    # 4000 draws: the share's standard deviation is at most 0.008.
    assert abs(np.mean(decisions) - lmbda) < 0.03


def test_lmbda_one_is_every_step_on_policy() -> None:
    assert all(on_policy_step(7, epoch, step, 1.0) for epoch in range(3) for step in range(50))


def test_each_step_is_decided_by_its_position_alone_so_a_resumed_job_decides_the_same() -> None:
    positions = [(epoch, step) for epoch in range(3) for step in range(20)]
    forward = {position: on_policy_step(7, *position, 0.5) for position in positions}
    resumed = {position: on_policy_step(7, *position, 0.5) for position in reversed(positions[25:])}
    assert all(resumed[position] == forward[position] for position in positions[25:])
    epochs = [[forward[(epoch, step)] for step in range(20)] for epoch in range(3)]
    assert epochs[0] != epochs[1] != epochs[2], "each epoch draws anew"
    assert [on_policy_step(8, 0, step, 0.5) for step in range(20)] != epochs[0], "the seed decides"


# -- what a mixed job's steps train on ----------------------------------------------------------------------


def _two_turns(i: int) -> Sample:
    """A chat of two exchanges: the first response is context, the last one the step's to replace."""
    return Sample(
        input_ids=(1, i, 50, 51, 2, i, 60, 61),
        target_mask=(False, False, True, True, False, False, True, True),
        source=f"train.jsonl:{i}",
        prompt_length=2,
        teacher_input_ids=(3, 1, i, 50, 51, 2, i, 60, 61),
        teacher_target_mask=(False, False, False, True, True, False, False, True, True),
    )


def test_a_samples_prompt_is_everything_before_its_last_response_for_each_model() -> None:
    prompt = prompt_of(_two_turns(5))
    assert prompt.input_ids.tolist() == [1, 5, 50, 51, 2, 5]
    assert prompt.prompt_length == 6 and not prompt.target_mask.any()
    assert prompt.teacher_input_ids is not None and prompt.teacher_target_mask is not None
    assert prompt.teacher_input_ids.tolist() == [3, 1, 5, 50, 51, 2, 5]
    assert not prompt.teacher_target_mask.any()


class _Rollout:
    """Answers each prompt `samples_per_prompt` times with (its last token + 100, sample number)."""

    def __init__(self) -> None:
        self.asked: list[tuple[list[list[int]], int]] = []

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, images: object = None
    ) -> list[list[int]]:
        self.asked.append((prompts, sampling.seed))
        return [[p[-1] + 100, n] for p in prompts for n in range(sampling.samples_per_prompt)]


def _mixed(
    samples: list[Sample], teacher: _Rollout | None = None
) -> tuple[MixedBatches, _Rollout, list[int]]:
    rollout = _Rollout()
    rounds: list[int] = []
    job = parse_job(apply_changes(BASE, MIXED))
    group = cast(RolloutActorGroup, rollout)
    batches = MixedBatches(
        samples,
        job,
        group,
        max_length=16,
        on_round=lambda step, prompts, responses: rounds.append(step),
        teacher=None if teacher is None else teacher.generate,
    )
    return batches, rollout, rounds


def test_an_on_policy_step_trains_on_the_students_answers_to_its_batchs_prompts_the_others_on_the_data() -> (
    None
):
    samples = [_two_turns(i) for i in range(12)]
    batches, rollout, rounds = _mixed(samples)
    data = DatasetBatches(samples, global_batch_size=4, seed=7)
    positions = [(epoch, step) for epoch in range(2) for step in range(3)]
    on = [(epoch, step) for epoch, step in positions if on_policy_step(7, epoch, step, 0.5)]
    assert 0 < len(on) < len(positions), "the seed mixes both kinds of step"
    for epoch, step in positions:
        trained = batches.samples(epoch, step).samples
        dataset = data.samples(epoch, step).samples
        assert batches.trains_own_samples(epoch, step) is ((epoch, step) in on)
        assert batches.needs_new_weights(epoch, step) is ((epoch, step) in on), "engines sync for these only"
        assert batches.resumable_at(step), "every step samples from the weights its checkpoint holds"
        if (epoch, step) not in on:
            assert trained == dataset
            continue
        # The batch's first 2 prompts (rollout.batchSize), each answered twice (samplesPerPrompt).
        assert [s.input_ids.tolist() for s in trained] == [
            [1, i, 50, 51, 2, i, i + 100, n]
            for i in (int(s.input_ids[1]) for s in dataset[:2])
            for n in (0, 1)
        ]
        assert all(s.labels() == s.input_ids[-2:].tolist() for s in trained)
        assert [s.teacher_input_ids.tolist()[:7] for s in trained if s.teacher_input_ids is not None] == [
            [3, *s.input_ids[:6].tolist()] for s in trained
        ]
    assert rounds == [epoch * 3 + step + 1 for epoch, step in on], "a round is logged as its step"
    seeds = [seed for _, seed in rollout.asked]
    assert len(seeds) == len(on) == len(set(seeds)), "one round per on-policy step, each sampled anew"

    resumed, asked, _ = _mixed(samples)
    last = on[-1]
    assert resumed.samples(*last).samples == batches.samples(*last).samples
    assert asked.asked == [rollout.asked[-1]]


def test_with_sequence_kd_the_other_steps_train_on_the_teachers_answers_to_each_prompt_of_their_batch() -> (
    None
):
    samples = [_two_turns(i) for i in range(12)]
    teacher = _Rollout()
    batches, rollout, rounds = _mixed(samples, teacher)
    data = DatasetBatches(samples, global_batch_size=4, seed=7)
    positions = [(epoch, step) for epoch in range(2) for step in range(3)]
    off = [(epoch, step) for epoch, step in positions if not on_policy_step(7, epoch, step, 0.5)]
    for epoch, step in positions:
        trained = batches.samples(epoch, step).samples
        if (epoch, step) not in off:
            continue
        assert batches.samples(epoch, step).samples == trained, "asked again, the same answers"
        # Every prompt of the batch once, the teacher asked its own prompt; its answer ends both sequences.
        firsts = [int(s.input_ids[1]) for s in data.samples(epoch, step).samples]
        assert [s.input_ids.tolist() for s in trained] == [[1, i, 50, 51, 2, i, i + 100, 0] for i in firsts]
        assert [s.teacher_input_ids.tolist() for s in trained if s.teacher_input_ids is not None] == [
            [3, 1, i, 50, 51, 2, i, i + 100, 0] for i in firsts
        ]
        assert all(s.labels() == [s.input_ids[-2], 0] for s in trained)
        assert not batches.needs_new_weights(epoch, step), "the teacher's weights do not change"
    assert len(teacher.asked) == len(off) and all(len(prompts) == 4 for prompts, _ in teacher.asked)
    assert len(rollout.asked) == len(positions) - len(off)
    assert rounds == [epoch * 3 + step + 1 for epoch, step in positions], "every step's samples are logged"


def test_a_mixed_epoch_is_every_record_in_global_batches() -> None:
    spec = parse_job(apply_changes(BASE, MIXED)).spec
    assert epoch_steps(spec, 17) == 5
    assert prompts_left_out(spec, 17) == 0


def test_a_teacher_with_its_own_tokenizer_is_refused_naming_lmbda() -> None:
    own = Sample(
        input_ids=(1, 2, 3),
        target_mask=(False, True, True),
        source="t",
        prompt_length=1,
        teacher_input_ids=(4, 5),
        teacher_target_mask=(False, True),
        target_spans=((0, 1), (1, 2)),
        teacher_target_spans=((0, 2),),
    )
    with pytest.raises(SpecError) as raised:
        _mixed([own] * 4)
    assert raised.value.field == "spec.rollout.lmbda"
