"""A step's plan brings per-sample figures from the ranks back to the step's order of samples."""

import numpy as np

from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.trainer.planning import StepPlan, sample_order


def _sample(length: int) -> Sample:
    return Sample(
        input_ids=np.arange(length, dtype=np.int32),
        target_mask=np.arange(length) >= 1,
        source="t",
        prompt_length=1,
    )


def test_figures_from_the_ranks_micro_batches_come_back_in_the_steps_order() -> None:
    a, b, c, d = (_sample(n) for n in (2, 3, 4, 5))
    # Rank 0: [d], [a]; rank 1: [c, b], and an empty micro-batch (the placeholder) after it.
    shards = [[[d], [a]], [[c, b], []]]
    plan = StepPlan(work=[], normalizer=1, teacher_positions=0, order=sample_order([a, b, c, d], shards))
    assert plan.order == [3, 0, 2, 1]
    assert plan.in_step_order([[0.4], [0.1], [0.3, 0.2], []]) == [0.1, 0.2, 0.3, 0.4]


def test_one_record_twice_in_a_step_takes_its_places_in_turn() -> None:
    a, b = _sample(2), _sample(3)
    assert sample_order([a, b, a], [[[a, a]], [[b]]]) == [0, 2, 1]
