"""The closed-form gradients equal what autograd finds through the divergence functions themselves."""

import pytest
import torch
import torch.nn.functional as F

from kubedistill.runtime.losses import KDConfig
from kubedistill.runtime.losses.closed_form import CLOSED_FORMS, cross_entropy_value_and_grad
from kubedistill.runtime.losses.divergences import forward_kl, reverse_kl
from kubedistill.runtime.losses.registry import get_loss


def _logits(seed: int, rows: int = 6, vocab: int = 40) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=generator, dtype=torch.float64) * 3


@pytest.mark.parametrize("divergence", [forward_kl, reverse_kl], ids=["fkl", "rkl"])
def test_the_closed_form_is_the_divergence_and_its_autograd_gradient(divergence) -> None:
    student, teacher = _logits(0).requires_grad_(), _logits(1)
    teacher[0, :10] = -torch.inf  # tokens the teacher rules out: 0 log 0 = 0 on both sides
    expected = divergence(student, teacher, KDConfig())
    (expected_grad,) = torch.autograd.grad(expected.sum(), student)
    value, grad = CLOSED_FORMS[divergence](student.detach(), teacher)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_the_names_fkl_and_rkl_reach_the_closed_forms() -> None:
    assert get_loss("fkl") in CLOSED_FORMS and get_loss("rkl") in CLOSED_FORMS
    assert get_loss("jsd") not in CLOSED_FORMS


def test_cross_entropy_and_its_scaled_gradient() -> None:
    logits = _logits(2).requires_grad_()
    targets = torch.tensor([0, 5, 39, 5, 7, 1])
    expected = F.cross_entropy(logits, targets, reduction="sum")
    (expected_grad,) = torch.autograd.grad(expected * 0.25, logits)
    value, grad = cross_entropy_value_and_grad(logits.detach(), targets, 0.25)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)
