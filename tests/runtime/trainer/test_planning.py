"""A step's plan brings per-sample figures from the ranks back to the step's order of samples, and gives a
context group's ranks the same micro-batches."""

from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from kubedistill.runtime.algorithms.vanilla import VanillaKD
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.teacher.backend import TeacherBatch
from kubedistill.runtime.trainer.colocation import OwnGpus
from kubedistill.runtime.trainer.planning import Planner, StepPlan, sample_order


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


class _Teacher:
    """Answers each micro-batch with a ref of its own (a string here) and keeps what it was asked."""

    actors: tuple = ()

    def __init__(self) -> None:
        self.asked: list[TeacherBatch] = []

    def hidden_states_refs(self, batches: list[TeacherBatch]) -> list[str]:
        self.asked.extend(batches)
        return [f"ref-{len(self.asked) - len(batches) + i}" for i in range(len(batches))]


def test_a_context_group_shares_its_micro_batches_and_the_teacher_is_asked_once_for_each() -> None:
    """Four ranks in context groups of two: two data shards, ranks 0 and 1 the first, 2 and 3 the second."""
    samples = [_sample(n) for n in (2, 3, 4, 5, 6, 7, 8, 9)]
    teacher = _Teacher()
    groups = cast(Any, SimpleNamespace(students=SimpleNamespace(world_size=4), teacher=teacher))
    planner = Planner(groups, OwnGpus(), VanillaKD, 0, 2, None, context_parallel=2)
    (plan,) = planner.train_steps([(samples, 0.0)])
    assert len(plan.work) == 4
    for first, second in ((0, 1), (2, 3)):
        assert plan.work[first] is plan.work[second]
    assert [batch.samples for batch in plan.work[0].micro_batches] == [2, 2]
    assert plan.work[2].micro_batches[0] is not plan.work[0].micro_batches[0]
    assert len(teacher.asked) == 4  # two data shards of two micro-batches of two samples
    assert sorted(map(str, plan.teacher_refs())) == [f"ref-{i}" for i in range(4)], "each ref once"
    assert plan.normalizer == sum(s.num_targets for s in samples), "each target counted once"
    assert sorted(plan.order) == list(range(8)), "each sample's figure comes once (the group's first rank)"
