"""KDFlow's top-1 cross-entropy and hierarchical ranking loss, against float64 references written from the
formulas (songmzhang/KDFlow @ 3a7a21a, kdflow/loss/top1_ce.py and hierarchical_ranking_loss.py) with a
loop per token and Python's own sort, so neither shares code with the vectorised implementation."""

import math

import pytest
import torch
from torch import Tensor

from kubedistill.runtime.losses import KDConfig
from kubedistill.runtime.losses.closed_form import top1_cross_entropy_value_and_grad
from kubedistill.runtime.losses.teacher_top import hierarchical_ranking, top1_cross_entropy

P = [0.5, 0.3, 0.2]
Q = [0.25, 0.15, 0.6]


def logits(probabilities: list[float]) -> Tensor:
    return torch.tensor([probabilities], dtype=torch.float64).log().requires_grad_()


def random_logits(seed: int, rows: int = 6, vocab: int = 40) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (3.0 * torch.randn(rows, vocab, generator=generator, dtype=torch.float64)).requires_grad_()


def ranked(probabilities: Tensor, k: int) -> list[int]:
    """The indices of the k largest entries, largest first."""
    values = probabilities.tolist()
    return sorted(range(len(values)), key=lambda v: -values[v])[:k]


def top1_reference(student: Tensor, teacher: Tensor) -> Tensor:
    rows = []
    for z_s, z_t in zip(student, teacher, strict=True):
        p, q = z_t.softmax(-1), z_s.softmax(-1)
        top = ranked(p, 1)[0]
        rows.append(-p[top] * q[top].log())
    return torch.stack(rows)


def hrl_reference(student: Tensor, teacher: Tensor, k: int) -> Tensor:
    rows = []
    for z_s, z_t in zip(student, teacher, strict=True):
        p, q = z_t.softmax(-1), z_s.softmax(-1)
        t, s = ranked(p.detach(), k), ranked(q.detach(), k)
        value = sum(torch.clamp(q[t[j]] - q[t[0]], min=0.0) for j in range(k))
        for i in range(k):
            for j in range(k):
                if q[s[i]] > p[s[j]]:
                    value = value + torch.clamp(q[s[j]] - q[t[i]], min=0.0)
        rows.append(value)
    return torch.stack(rows)


def test_top1_ce_is_the_teachers_confidence_times_the_students_log_loss_on_its_top_token() -> None:
    value = top1_cross_entropy(logits(Q), logits(P), KDConfig())
    assert value.item() == pytest.approx(-0.5 * math.log(0.25), rel=1e-12)


def test_hrl_by_hand_on_three_tokens_with_k_2() -> None:
    # T = (0, 1), S = (2, 0): the teacher's top token is still the student's first of T (no first term);
    # [q(S_i) > p(S_j)] holds for (0, 0), (0, 1), (1, 0), and relu(q(S_j) - q(T_i)) is 0.35, 0, 0.45 there.
    value = hierarchical_ranking(logits(Q), logits(P), KDConfig(hrl_top_k=2))
    assert value.item() == pytest.approx(0.35 + 0.45, rel=1e-12)


def test_hrl_penalises_a_student_that_ranks_another_teacher_top_token_first() -> None:
    # T = (0, 1); the student puts token 1 above token 0 by 0.4.
    student = logits([0.1, 0.5, 0.4])
    value = hierarchical_ranking(student, logits(P), KDConfig(hrl_top_k=2))
    first_term = 0.5 - 0.1
    # S = (1, 2): [q(S_i) > p(S_j)] for (0, 0), (0, 1), (1, 0), (1, 1); relu(q(S_j) - q(T_i)) over those:
    # i = 0 (q 0.1): 0.4, 0.3; i = 1 (q 0.5): 0, 0.
    assert value.item() == pytest.approx(first_term + 0.4 + 0.3, rel=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5, 40])
@pytest.mark.parametrize("seed", [1, 2])
def test_hrl_matches_its_reference_in_value_and_gradient(k: int, seed: int) -> None:
    student, teacher = random_logits(seed), random_logits(seed + 10).detach()
    value = hierarchical_ranking(student, teacher, KDConfig(hrl_top_k=k))
    expected = hrl_reference(student, teacher, k)
    (grad,) = torch.autograd.grad(value.sum(), student)
    (expected_grad,) = torch.autograd.grad(expected.sum(), student)

    assert expected.abs().sum() > 0.0
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("seed", [1, 2])
def test_top1_ce_matches_its_reference_and_its_closed_form_gradient(seed: int) -> None:
    student, teacher = random_logits(seed), random_logits(seed + 10).detach()
    value = top1_cross_entropy(student, teacher, KDConfig())
    expected = top1_reference(student, teacher)
    (expected_grad,) = torch.autograd.grad(expected.sum(), student)
    closed_value, closed_grad = top1_cross_entropy_value_and_grad(student.detach(), teacher)

    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(closed_value, expected.detach(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(closed_grad, expected_grad, rtol=1e-12, atol=1e-15)


def test_hrl_and_its_gradient_are_zero_when_the_student_is_the_teacher() -> None:
    student = random_logits(seed=1)
    value = hierarchical_ranking(student, student.detach().clone(), KDConfig(hrl_top_k=5))
    (grad,) = torch.autograd.grad(value.sum(), student)

    assert torch.equal(value, torch.zeros_like(value))
    assert torch.equal(grad, torch.zeros_like(grad))


def test_top1_ce_on_a_one_hot_teacher_is_the_cross_entropy_on_its_token() -> None:
    student = random_logits(seed=1)
    teacher = torch.full((6, 40), -math.inf, dtype=torch.float64)
    targets = torch.arange(6) * 7
    teacher[torch.arange(6), targets] = 0.0
    expected = torch.nn.functional.cross_entropy(student, targets, reduction="none")
    value = top1_cross_entropy(student, teacher, KDConfig())
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0.0)
