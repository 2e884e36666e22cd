"""The student's optimizer: its parameter groups, its learning-rate schedules (warm-up, decay, floor),
and its state moving out of the way of a colocated engine."""

import math

import pytest
import torch

from kubedistill.api.spec import DistillationSpec, TrainingSpec
from kubedistill.runtime.student.optimizer import StudentOptimizer, lr_factor, warmup_steps


def test_warmup_rises_linearly_to_the_peak() -> None:
    training = TrainingSpec(learning_rate=1e-3, warmup_ratio=0.1, min_learning_rate=0.0)
    assert warmup_steps(training, 100) == 10
    factors = [lr_factor(step, training, 100) for step in range(10)]
    assert factors == pytest.approx([(s + 1) / 11 for s in range(10)])
    assert lr_factor(10, training, 100) == pytest.approx(1.0)


def test_cosine_decays_to_the_floor() -> None:
    training = TrainingSpec(learning_rate=1e-3, warmup_ratio=0.0, min_learning_rate=1e-4)
    assert lr_factor(0, training, 100) == pytest.approx(1.0)
    assert lr_factor(50, training, 100) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, training, 100) == pytest.approx(0.1)
    assert lr_factor(25, training, 100) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_constant_schedule_stays_at_the_peak_after_warmup() -> None:
    training = TrainingSpec(learning_rate=1e-3, warmup_ratio=0.0, lr_scheduler="constant")
    assert {lr_factor(step, training, 50) for step in range(50)} == {1.0}


PEAK, FLOOR = 1e-3, 1e-4


def learning_rates(steps: list[int], total_steps: int, **training: object) -> list[float]:
    spec = TrainingSpec.model_validate({"learningRate": PEAK, "minLearningRate": FLOOR, **training})
    return [PEAK * lr_factor(step, spec, total_steps) for step in steps]


def test_linear_schedule_falls_in_a_straight_line_from_the_peak_to_the_floor() -> None:
    # 10 warm-up steps, then 90 steps from the peak to the floor.
    rates = learning_rates([4, 10, 55, 100], 100, lrScheduler="linear", warmupRatio=0.1)
    assert rates == pytest.approx([PEAK * 5 / 11, PEAK, FLOOR + (PEAK - FLOOR) * 0.5, FLOOR])


def test_cosine_with_restarts_returns_to_the_peak_at_each_cycle_and_ends_at_the_floor() -> None:
    # 20 warm-up steps, then 80 steps in 4 cosine cycles of 20 steps each.
    rates = learning_rates(
        [20, 30, 39, 40, 50, 100], 100, lrScheduler="cosineWithRestarts", lrCycles=4, warmupRatio=0.2
    )
    end_of_cycle = FLOOR + (PEAK - FLOOR) * 0.5 * (1 + math.cos(math.pi * 19 / 20))
    half_way = FLOOR + (PEAK - FLOOR) * 0.5
    assert rates == pytest.approx([PEAK, half_way, end_of_cycle, PEAK, half_way, FLOOR])


def test_cosine_with_one_cycle_is_the_cosine_schedule() -> None:
    steps = list(range(0, 101, 7))
    assert learning_rates(steps, 100, lrScheduler="cosineWithRestarts", lrCycles=1) == pytest.approx(
        learning_rates(steps, 100, lrScheduler="cosineWithMinLr")
    )


def test_wsd_holds_the_peak_until_its_decay_then_falls_linearly_to_the_floor() -> None:
    # 10 warm-up steps; the last 20 of 100 steps decay.
    steps = [4, 10, 79, 80, 90, 99, 100]
    rates = learning_rates(steps, 100, lrScheduler="wsd", warmupRatio=0.1, lrDecayRatio=0.2)
    assert rates == pytest.approx(
        [PEAK * 5 / 11, PEAK, PEAK, PEAK, FLOOR + (PEAK - FLOOR) * 0.5, FLOOR + (PEAK - FLOOR) / 20, FLOOR]
    )


def test_the_projectors_train_at_their_own_rate_and_frozen_parameters_not_at_all() -> None:
    model = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2), requires_grad=False)]
    projector = [torch.nn.Parameter(torch.ones(3))]
    training = TrainingSpec(learning_rate=1e-3, warmup_ratio=0.0, lr_scheduler="constant")
    optimizer = StudentOptimizer(
        model, projector, training, DistillationSpec(projectorLearningRate=5e-2), 10, torch.device("cpu")
    )
    groups = optimizer.optimizer.param_groups
    assert [len(g["params"]) for g in groups] == [1, 1]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 5e-2])
    assert optimizer.learning_rate == pytest.approx(1e-3)


def test_the_state_moves_to_the_cpu_and_back_keeping_its_values() -> None:
    parameter = torch.nn.Parameter(torch.ones(4))
    training = TrainingSpec(learning_rate=1e-2, warmup_ratio=0.0)
    optimizer = StudentOptimizer([parameter], [], training, DistillationSpec(), 10, torch.device("cpu"))
    parameter.grad = torch.full((4,), 0.5)
    optimizer.step()
    before = optimizer.optimizer.state[parameter]["exp_avg"].clone()
    optimizer.move_state("cpu")
    optimizer.move_state("device")
    assert torch.equal(optimizer.optimizer.state[parameter]["exp_avg"], before)
    assert optimizer.learning_rate < 1e-2, "the schedule stepped with the optimizer"
