"""Clipping by this rank's part of the gradients: the same norm and the same scaling as torch's
`clip_grad_norm_` (across sharded and replicated ranks: tests/runtime/trainer/test_controller.py)."""

import math

import pytest
import torch
from torch import nn

from kubedistill.runtime.student.clipping import LocalGradients


def _parameters(scale: float) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    parameters = [nn.Parameter(torch.zeros(shape)) for shape in ((4, 3), (7,), (2, 2, 2))]
    for parameter in parameters:
        parameter.grad = scale * torch.randn(parameter.shape, generator=generator)
    return [*parameters, nn.Parameter(torch.zeros(3))]  # one without a gradient (frozen)


@pytest.mark.parametrize("scale", [0.01, 10.0])
def test_one_rank_clips_as_clip_grad_norm_does(scale: float) -> None:
    ours, theirs = _parameters(scale), _parameters(scale)
    gradients = LocalGradients.of(ours, world_size=1)
    norm = math.sqrt(float(gradients.square_sum()))
    gradients.clip_(norm, max_norm=1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm=1.0)
    assert norm == pytest.approx(float(expected), rel=1e-6)
    for mine, reference in zip(ours, theirs, strict=True):
        if reference.grad is not None:
            torch.testing.assert_close(mine.grad, reference.grad)


def test_a_plain_tensor_is_held_by_every_rank_so_each_counts_its_share() -> None:
    one = float(LocalGradients.of(_parameters(1.0), world_size=1).square_sum())
    assert float(LocalGradients.of(_parameters(1.0), world_size=4).square_sum()) == pytest.approx(one / 4)


def test_a_non_finite_norm_leaves_the_gradients_as_they_are() -> None:
    parameters = [p for p in _parameters(1.0) if p.grad is not None]
    before = [p.grad.clone() for p in parameters if p.grad is not None]
    LocalGradients.of(parameters, world_size=1).clip_(math.nan, max_norm=1.0)
    assert all(torch.equal(p.grad, b) for p, b in zip(parameters, before, strict=True))
