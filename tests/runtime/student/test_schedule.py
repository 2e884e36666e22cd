"""The learning-rate schedule: warm-up, cosine decay, floor."""

import math

import pytest

from kubedistill.api.spec import TrainingSpec
from kubedistill.runtime.student.schedule import lr_factor, warmup_steps


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
