import math

import pytest
import torch
from torch import Tensor

from kubedistill.runtime.losses import KDConfig
from kubedistill.runtime.losses.divergences import (
    adaptive_kl,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skewed_kl,
    skewed_reverse_kl,
    total_variation,
)
from kubedistill.runtime.losses.registry import Divergence

ALL = [forward_kl, reverse_kl, generalized_jsd, total_variation, skewed_kl, skewed_reverse_kl, adaptive_kl]

P = [0.5, 0.3, 0.2]
Q = [0.2, 0.2, 0.6]


def kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


def mix(weight_a: float, a: list[float], b: list[float]) -> list[float]:
    return [weight_a * x + (1 - weight_a) * y for x, y in zip(a, b, strict=True)]


def logits(probabilities: list[float]) -> Tensor:
    return torch.tensor([probabilities], dtype=torch.float64).log().requires_grad_()


def random_logits(seed: int, rows: int = 6, vocab: int = 40) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (3.0 * torch.randn(rows, vocab, generator=generator, dtype=torch.float64)).requires_grad_()


@pytest.mark.parametrize(
    ("divergence", "config", "expected"),
    [
        (forward_kl, KDConfig(), kl(P, Q)),
        (reverse_kl, KDConfig(), kl(Q, P)),
        (generalized_jsd, KDConfig(jsd_beta=0.3), 0.3 * kl(P, mix(0.3, P, Q)) + 0.7 * kl(Q, mix(0.3, P, Q))),
        (total_variation, KDConfig(), 0.5 * (0.3 + 0.1 + 0.4)),
        (skewed_kl, KDConfig(skew_lambda=0.1), kl(P, mix(0.1, P, Q))),
        (skewed_reverse_kl, KDConfig(skew_lambda=0.1), kl(Q, mix(0.1, Q, P))),
        # alpha 0.5: head = {0.5} (cumulative 0.5), tail = {0.3, 0.2}: g_head = 0.3, g_tail = 0.1 + 0.4.
        (adaptive_kl, KDConfig(adaptive_alpha=0.5), (0.3 * kl(P, Q) + 0.5 * kl(Q, P)) / 0.8),
        # alpha 0.4: the top token is head even when it alone passes alpha.
        (adaptive_kl, KDConfig(adaptive_alpha=0.4), (0.3 * kl(P, Q) + 0.5 * kl(Q, P)) / 0.8),
        # alpha 0.8: head = {0.5, 0.3}: g_head = 0.3 + 0.1, g_tail = 0.4.
        (adaptive_kl, KDConfig(adaptive_alpha=0.8), (0.4 * kl(P, Q) + 0.4 * kl(Q, P)) / 0.8),
    ],
    ids=["fkl", "rkl", "jsd", "tvd", "skl", "srkl", "akl-alpha-0.5", "akl-alpha-0.4", "akl-alpha-0.8"],
)
def test_divergence_matches_its_closed_form(
    divergence: Divergence, config: KDConfig, expected: float
) -> None:
    assert divergence(logits(Q), logits(P), config).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("divergence", ALL)
def test_divergence_and_its_gradient_are_zero_on_identical_logits(divergence: Divergence) -> None:
    student = random_logits(seed=1)
    value = divergence(student, student.detach().clone(), KDConfig())
    (grad,) = torch.autograd.grad(value.sum(), student)

    torch.testing.assert_close(value, torch.zeros_like(value), atol=1e-12, rtol=0.0)
    torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-12, rtol=0.0)


@pytest.mark.parametrize(
    ("beta", "limit"), [(0.0, forward_kl), (1.0, reverse_kl)], ids=["beta-0-is-fkl", "beta-1-is-rkl"]
)
def test_jsd_at_the_limits_is_exactly_the_kl(beta: float, limit: Divergence) -> None:
    student, teacher = random_logits(seed=1), random_logits(seed=2)
    config = KDConfig(jsd_beta=beta)
    assert torch.equal(generalized_jsd(student, teacher, config), limit(student, teacher, config))


@pytest.mark.parametrize(
    ("skewed", "limit"), [(skewed_kl, forward_kl), (skewed_reverse_kl, reverse_kl)], ids=["skl", "srkl"]
)
def test_skewed_kl_without_skew_is_the_plain_kl(skewed: Divergence, limit: Divergence) -> None:
    student, teacher = random_logits(seed=1), random_logits(seed=2)
    config = KDConfig(skew_lambda=0.0)
    assert torch.equal(skewed(student, teacher, config), limit(student, teacher, config))


@pytest.mark.parametrize(
    ("divergence", "config"),
    [
        (forward_kl, KDConfig()),
        (generalized_jsd, KDConfig(jsd_beta=0.5)),
        (total_variation, KDConfig()),
        (skewed_kl, KDConfig(skew_lambda=0.1)),
        (skewed_kl, KDConfig(skew_lambda=1.0)),
        (skewed_reverse_kl, KDConfig(skew_lambda=0.1)),
    ],
    ids=["fkl", "jsd", "tvd", "skl", "skl-lambda-1", "srkl"],
)
def test_teacher_probabilities_of_exactly_zero_give_finite_values_and_gradients(
    divergence: Divergence, config: KDConfig
) -> None:
    student = random_logits(seed=1)
    teacher = random_logits(seed=2).detach()
    teacher[:, ::3] = -math.inf
    value = divergence(student, teacher, config)
    (grad,) = torch.autograd.grad(value.sum(), student)

    assert torch.isfinite(value).all()
    assert (value >= 0).all()
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("divergence", [reverse_kl, adaptive_kl])
def test_teacher_probabilities_of_exactly_zero_never_give_nan_where_the_divergence_is_infinite(
    divergence: Divergence,
) -> None:
    teacher = random_logits(seed=2).detach()
    teacher[:, ::3] = -math.inf
    assert not divergence(random_logits(seed=1), teacher, KDConfig()).isnan().any()


def test_adaptive_kl_weights_are_constants_of_the_gradient() -> None:
    student, teacher = logits(Q), logits(P).detach()
    (grad,) = torch.autograd.grad(adaptive_kl(student, teacher, KDConfig(adaptive_alpha=0.5)).sum(), student)
    weighted = (
        0.3 * forward_kl(student, teacher, KDConfig()) + 0.5 * reverse_kl(student, teacher, KDConfig())
    ) / 0.8
    (expected,) = torch.autograd.grad(weighted.sum(), student)
    torch.testing.assert_close(grad, expected)


@pytest.mark.filterwarnings("ignore:You are importing from 'trl.experimental'")
@pytest.mark.parametrize("temperature", [0.5, 2.0])
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_matches_trl_generalized_jsd_loss(beta: float, temperature: float) -> None:
    from trl.experimental.gkd import GKDTrainer

    student, teacher = random_logits(seed=1).detach(), random_logits(seed=2).detach()
    labels = torch.tensor([[0, -100, 5, 7, -100, 1]])
    trl = GKDTrainer.generalized_jsd_loss(
        student[None], teacher[None], labels, beta=beta, temperature=temperature, reduction="none"
    ).sum(dim=-1)
    ours = generalized_jsd(student / temperature, teacher / temperature, KDConfig(jsd_beta=beta))

    torch.testing.assert_close(ours[labels[0] != -100], trl, rtol=1e-12, atol=1e-14)
