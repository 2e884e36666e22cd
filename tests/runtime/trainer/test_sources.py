"""How many optimizer steps an epoch has (computed once, from the spec and the number of training records),
and which samples each step trains on."""

from collections import Counter
from typing import cast

import numpy as np
import pytest

from kubedistill.api.job import SpecError, parse_job
from kubedistill.api.spec import DistillationJobSpec
from kubedistill.runtime.data.images import ImageInputs
from kubedistill.runtime.data.mixture import Mixture
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.rollout.backend import SamplingConfig
from kubedistill.runtime.rollout.group import RolloutActorGroup
from kubedistill.runtime.trainer.sources import (
    BatchSource,
    DatasetBatches,
    RolloutBatches,
    epoch_steps,
    prompts_left_out,
    steps_per_round,
    with_response,
)
from tests.api.manifests import BASE, ON_POLICY_ROLLOUT, REINFORCEMENT, REINFORCEMENT_ROLLOUT, apply_changes


def _spec(changes: dict[str, object]) -> DistillationJobSpec:
    return parse_job(apply_changes(BASE, changes)).spec


OFF_POLICY = {"spec.training.globalBatchSize": 4, "spec.student.replicas": 1}
# 8 prompts x 2 samples each feed 16 sequences per round: 4 steps of 4.
ON_POLICY = {
    "spec.mode": "onPolicy",
    "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 8, "samplesPerPrompt": 2},
    "spec.training.globalBatchSize": 4,
    "spec.student.replicas": 1,
}


def test_an_epoch_is_every_record_in_global_batches_the_last_one_smaller() -> None:
    assert epoch_steps(_spec(OFF_POLICY), 10) == 3
    assert prompts_left_out(_spec(OFF_POLICY), 10) == 0


def test_the_prompts_that_fill_no_on_policy_round_are_counted() -> None:
    assert prompts_left_out(_spec(ON_POLICY), 17) == 1


def test_an_on_policy_epoch_is_its_full_rounds_of_prompts_times_the_steps_each_round_feeds() -> None:
    spec = _spec(ON_POLICY)
    assert steps_per_round(spec) == 4
    assert epoch_steps(spec, 17) == 2 * 4


@pytest.mark.parametrize(
    ("changes", "field"),
    [(OFF_POLICY, "spec.training.globalBatchSize"), (ON_POLICY, "spec.rollout.batchSize")],
    ids=["off-policy", "on-policy"],
)
def test_fewer_records_than_one_step_takes_is_the_users_mistake_naming_the_field(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(SpecError) as raised:
        epoch_steps(_spec(changes), 3)
    assert raised.value.field == field
    assert str(raised.value) == f"{field}: {raised.value.message}"
    assert "is more than the 3 training records" in raised.value.message


def _prompt(images: ImageInputs | None = None) -> Sample:
    return Sample(
        input_ids=(1, 2, 3, 3, 4),
        target_mask=(False,) * 5,
        source="p.jsonl:1",
        prompt_length=5,
        images=images,
    )


def test_a_generated_response_becomes_the_targets_after_its_prompt_whole() -> None:
    sample = with_response(_prompt(), [7, 8, 9], max_length=16)
    assert sample.input_ids.tolist() == [1, 2, 3, 3, 4, 7, 8, 9]
    assert sample.labels() == [7, 8, 9]
    assert sample.truncation is None


def test_a_response_past_max_length_is_cut_and_says_so() -> None:
    sample = with_response(_prompt(), [7, 8, 9, 10], max_length=7)
    assert sample.labels() == [7, 8]
    assert sample.truncation == "the response's last 2 tokens cut to fit maxLength 7"


def test_a_response_ends_before_an_image_placeholder_the_engine_sampled() -> None:
    pictures = ImageInputs(np.zeros((4, 8), dtype=np.float32), ((1, 2, 2),), image_token_id=3)
    sample = with_response(_prompt(pictures), [7, 8, 3, 9], max_length=16)
    assert sample.labels() == [7, 8]
    assert sample.images is pictures, "the prompt's pictures stay with it"
    assert sample.truncation == "the response cut at token 2, an image placeholder the engine sampled"


# -- mixtures (spec.data.mixture) ---------------------------------------------------------------------------

MIXED = Mixture(sizes=(6, 4, 3), weights=(0.5, 0.25, 0.25), seed=7)
"""13 samples an epoch: 7 of the first source's 6 (one repeated), 3 of the second's 4, 3 of the third's 3."""


def _sources(mixture: Mixture) -> list[Sample]:
    """Samples end to end, source by source, each naming its source and its place in it."""
    return [
        Sample(input_ids=(1, 2, 3), target_mask=(False, True, True), source=f"{source}:{i}", prompt_length=1)
        for source, size in enumerate(mixture.sizes)
        for i in range(size)
    ]


def _walk(batches: BatchSource, epochs: range, steps: int, start: int = 0) -> list[list[str]]:
    return [
        [sample.source for sample in batches.samples(epoch, step).samples]
        for epoch in epochs
        for step in range(start if epoch == epochs.start else 0, steps)
    ]


def test_a_mixture_epoch_has_the_steps_of_all_its_samples_and_each_sources_share_of_them() -> None:
    batches = DatasetBatches(_sources(MIXED), global_batch_size=4, seed=7, mixture=MIXED)
    epoch = _walk(batches, range(1), steps=4)
    assert [len(step) for step in epoch] == [4, 4, 4, 1]
    sources = Counter(name.split(":")[0] for step in epoch for name in step)
    assert sources == {"0": 7, "1": 3, "2": 3}


def test_a_mixture_resumed_mid_epoch_trains_on_the_batches_an_uninterrupted_run_does() -> None:
    uninterrupted = _walk(DatasetBatches(_sources(MIXED), 4, 7, MIXED), range(3), steps=4)
    resumed = _walk(DatasetBatches(_sources(MIXED), 4, 7, MIXED), range(1, 3), steps=4, start=2)
    assert resumed == uninterrupted[4 + 2 :]
    assert uninterrupted[:4] != uninterrupted[4:8], "each epoch draws and shuffles anew"


class _EchoRollout:
    """Answers every prompt with one token, and keeps the prompts asked for."""

    def __init__(self) -> None:
        self.asked: list[list[list[int]]] = []

    def generate(self, prompts: list[list[int]], sampling: object, images: object = None) -> list[list[int]]:
        self.asked.append(prompts)
        return [[9] for _ in prompts]


def _on_policy_batches(mixture: Mixture) -> tuple[RolloutBatches, _EchoRollout]:
    prompts = [
        Sample(input_ids=(source, i), target_mask=(False, False), source=f"{source}:{i}", prompt_length=2)
        for source, size in enumerate(mixture.sizes)
        for i in range(size)
    ]
    spec = {
        **ON_POLICY,
        "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 4, "samplesPerPrompt": 1},
        "spec.training.seed": 7,
    }
    rollout = _EchoRollout()
    job = parse_job(apply_changes(BASE, spec))
    group = cast(RolloutActorGroup, rollout)
    return RolloutBatches(prompts, job, group, max_length=16, mixture=mixture), rollout


def test_on_policy_rounds_draw_their_prompts_from_the_mixture_and_resume_the_same() -> None:
    batches, rollout = _on_policy_batches(MIXED)
    for epoch in range(2):
        for step in range(3):
            batches.samples(epoch, step)
    first_epoch = Counter(prompt[0] for round_ in rollout.asked[:3] for prompt in round_)
    # 13 prompts an epoch fill 3 rounds of 4; the one left over waits for another epoch's order.
    assert sum(first_epoch.values()) == 12
    assert all(share - 1 <= first_epoch[source] <= share for source, share in enumerate(MIXED.shares))

    resumed, asked = _on_policy_batches(MIXED)
    resumed.samples(1, 1)
    assert asked.asked == [rollout.asked[4]]


class _SamplingRollout:
    """Answers each prompt samplesPerPrompt times, prompt by prompt as the engines do: its id, then the
    answer's number."""

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, images: object = None
    ) -> list[list[int]]:
        return [[prompt[0], k] for prompt in prompts for k in range(sampling.samples_per_prompt)]


@pytest.mark.parametrize(("mode", "grouped"), [("reinforcement", True), ("onPolicy", False)])
def test_a_reinforcement_round_makes_each_prompts_answers_one_group(mode: str, grouped: bool) -> None:
    """GRPO compares the answers to one prompt: they share a `Sample.group` (kept whole in one micro-batch);
    other on-policy samples stay on their own."""
    prompts = [
        Sample(input_ids=(10 + i, 1), target_mask=(False, False), source=f"p:{i}", prompt_length=2)
        for i in range(6)
    ]
    spec = {
        **REINFORCEMENT,
        "spec.mode": mode,
        "spec.rollout": {**REINFORCEMENT_ROLLOUT, "batchSize": 3, "samplesPerPrompt": 2},
        "spec.training.globalBatchSize": 6,
        "spec.student.replicas": 1,
    }
    batches = RolloutBatches(
        prompts, parse_job(apply_changes(BASE, spec)), cast(RolloutActorGroup, _SamplingRollout()), 16
    )
    step = batches.samples(0, 0).samples
    by_prompt = [sample.input_ids[0] for sample in step]
    assert [sample.labels()[1] for sample in step] == [0, 1] * 3
    if grouped:
        assert [sample.group for sample in step] == [0, 0, 1, 1, 2, 2]
        assert all(by_prompt[2 * g] == by_prompt[2 * g + 1] for g in range(3))
    else:
        assert all(sample.group is None for sample in step)


def test_preference_pairs_are_shuffled_and_batched_whole_a_global_batch_counting_their_sequences() -> None:
    pairs = [
        Sample(
            input_ids=[1, 2, 3],
            target_mask=[False, True, True],
            source=f"p:{i // 2}",
            prompt_length=1,
            group=i // 2,
        )
        for i in range(10)
    ]
    batches = DatasetBatches(pairs, global_batch_size=4, seed=7)
    steps = [batches.samples(0, step).samples for step in range(3)]

    assert [len(step) for step in steps] == [4, 4, 2]
    groups = [sample.group for step in steps for sample in step]
    assert sorted(groups) == sorted(sample.group for sample in pairs)
    assert all(first == second for first, second in zip(groups[0::2], groups[1::2], strict=True))
    assert groups[0::2] != sorted(groups[0::2])  # shuffled, pair by pair
