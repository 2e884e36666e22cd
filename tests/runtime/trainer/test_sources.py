"""How many optimizer steps an epoch has: computed once, from the spec and the number of training records."""

import numpy as np
import pytest

from kubedistill.api.job import SpecError, parse_job
from kubedistill.api.spec import DistillationJobSpec
from kubedistill.runtime.data.images import ImageInputs
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.trainer.sources import epoch_steps, prompts_left_out, steps_per_round, with_response
from tests.api.manifests import BASE, ON_POLICY_ROLLOUT, apply_changes


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
