"""How many optimizer steps an epoch has: computed once, from the spec and the number of training records."""

import pytest

from kubedistill.api.job import SpecError, parse_job
from kubedistill.api.spec import DistillationJobSpec
from kubedistill.runtime.trainer.sources import epoch_steps, steps_per_round
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


def test_an_epoch_is_the_full_global_batches_of_the_records() -> None:
    assert epoch_steps(_spec(OFF_POLICY), 10) == 2


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
