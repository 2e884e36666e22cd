"""Several teachers: the fused loss against the mixture's formula in float64, and against EasyDistill's sum of
per-teacher losses where the two must agree (fkl)."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from kubedistill.runtime.losses import IGNORE_INDEX, KDConfig, fused_kd_loss, reference_kd_loss
from kubedistill.runtime.losses.fused import top1_agreements
from kubedistill.runtime.losses.mixture import TeacherMixture, mixed_log_probs
from tests.runtime.losses.problems import LOSSES, Problem, make_problem


def assert_close(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-9)


WEIGHTS = (3.0, 1.0)
"""Unnormalised on purpose: the mixture is 3/4 of the first teacher and 1/4 of the second."""


def two_teachers(seed: int = 0) -> tuple[Problem, TeacherMixture, list[Tensor]]:
    """The fused loss's problem with a second teacher (another width, the same vocabulary) beside the first,
    the mixture, and each teacher's logits."""
    first = make_problem(seed=seed)
    second = make_problem(teacher_dim=8, seed=seed + 1)
    assert first.teacher_hidden is not None and first.teacher_weight is not None
    assert second.teacher_hidden is not None and second.teacher_weight is not None
    problem = replace(
        first,
        teacher_hidden=torch.cat([first.teacher_hidden, second.teacher_hidden], dim=1),
        teacher_weight=torch.cat([first.teacher_weight, second.teacher_weight], dim=1),
    )
    logits = [first.teacher_hidden @ first.teacher_weight.T, second.teacher_hidden @ second.teacher_weight.T]
    return problem, TeacherMixture.of([12, 8], WEIGHTS), logits


def mixture_reference(problem: Problem, teacher_logits: list[Tensor], config: KDConfig):
    """The formula written out: m = sum_t w_t softmax(z_t / T) per token, as explicit probabilities, and the
    plain loss with log m as the teacher (reference_kd_loss divides its teacher's logits by T: T log m)."""
    total = sum(WEIGHTS)
    m = sum(
        w / total * F.softmax(z / config.temperature, dim=-1)
        for w, z in zip(WEIGHTS, teacher_logits, strict=True)
    )
    assert isinstance(m, Tensor)
    student_hidden = problem.student_hidden.detach().clone().requires_grad_()
    student_weight = problem.student_weight.detach().clone().requires_grad_()
    out = reference_kd_loss(
        student_hidden @ student_weight.T,
        config.temperature * m.log(),
        problem.labels,
        config,
        problem.normalizer,
    )
    grads = torch.autograd.grad(out.loss, [student_hidden, student_weight])
    return out, *grads


@pytest.mark.parametrize(
    ("loss", "temperature"), [*((loss, 2.0) for loss in LOSSES), ("fkl", 1.0), ("rkl", 1.0)]
)
def test_fused_loss_of_two_teachers_is_the_divergence_from_their_weighted_mixture(
    loss: str, temperature: float
) -> None:
    problem, mixture, logits = two_teachers()
    config = KDConfig(loss=loss, temperature=temperature, kd_ratio=0.6, chunk_size=8)
    expected, expected_grad_hidden, expected_grad_weight = mixture_reference(problem, logits, config)
    actual, grad_hidden, grad_weight = problem.run(fused_kd_loss, replace(config, teachers=mixture))
    assert_close(actual.loss, expected.loss)
    assert_close(actual.kd_sum, expected.kd_sum)
    assert_close(actual.ce_sum, expected.ce_sum)
    assert_close(grad_hidden, expected_grad_hidden)
    assert_close(grad_weight, expected_grad_weight)


def test_fkl_of_the_mixture_has_the_gradient_of_easydistills_weighted_sum_of_per_teacher_kls() -> None:
    # EasyDistill (easydistill/kd/multi_train.py:126-137) adds one KL(p_t || q) per teacher; with weights,
    # sum_t w_t KL(p_t || q) = KL(m || q) + sum_t w_t KL(p_t || m), whose last term is the student's constant.
    problem, mixture, logits = two_teachers(seed=3)
    config = KDConfig(loss="fkl", kd_ratio=0.4, chunk_size=5)
    actual, grad_hidden, grad_weight = problem.run(fused_kd_loss, replace(config, teachers=mixture))

    hidden = problem.student_hidden.detach().clone().requires_grad_()
    weight = problem.student_weight.detach().clone().requires_grad_()
    kept = problem.labels != IGNORE_INDEX
    student = (hidden @ weight.T)[kept]
    log_q = F.log_softmax(student[:, : logits[0].shape[-1]], dim=-1)
    log_ps = [F.log_softmax(z[kept], dim=-1) for z in logits]
    log_m = mixed_log_probs(log_ps, mixture.weights)
    pairs = list(zip(mixture.weights, log_ps, strict=True))
    per_teacher = torch.stack([w * (lp.exp() * (lp - log_q)).sum() for w, lp in pairs]).sum()
    constant = torch.stack([w * (lp.exp() * (lp - log_m)).sum() for w, lp in pairs]).sum()
    ce = F.cross_entropy(student, problem.labels[kept], reduction="sum")
    easydistill = ((1.0 - config.kd_ratio) * ce + config.kd_ratio * per_teacher) / problem.normalizer
    expected_grad_hidden, expected_grad_weight = torch.autograd.grad(easydistill, [hidden, weight])

    assert_close(actual.kd_sum, per_teacher - constant)
    assert_close(grad_hidden, expected_grad_hidden)
    assert_close(grad_weight, expected_grad_weight)


def test_a_mixture_of_one_teacher_is_that_teacher() -> None:
    problem = make_problem()
    config = KDConfig(loss="jsd", kd_ratio=0.5, temperature=2.0, chunk_size=6)
    alone, grad_hidden, grad_weight = problem.run(fused_kd_loss, config)
    mixed, mixed_grad_hidden, mixed_grad_weight = problem.run(
        fused_kd_loss, replace(config, teachers=TeacherMixture.of([12], [5.0]))
    )
    assert_close(mixed.loss, alone.loss)
    assert_close(mixed_grad_hidden, grad_hidden)
    assert_close(mixed_grad_weight, grad_weight)


def test_agreement_with_several_teachers_is_with_the_token_their_mixture_ranks_first() -> None:
    problem, mixture, logits = two_teachers()
    assert problem.teacher_hidden is not None and problem.teacher_weight is not None
    student_top = (problem.student_hidden @ problem.student_weight[:45].T).argmax(dim=-1)
    mixture_top = sum(w / sum(WEIGHTS) * F.softmax(z, dim=-1) for w, z in zip(WEIGHTS, logits, strict=True))
    assert isinstance(mixture_top, Tensor)
    expected = int((student_top == mixture_top.argmax(dim=-1)).sum())
    agreements = top1_agreements(
        problem.student_hidden,
        problem.student_weight,
        problem.teacher_hidden,
        problem.teacher_weight,
        7,
        mixture,
    )
    assert agreements == expected


def test_weights_are_normalised_and_must_be_positive() -> None:
    assert TeacherMixture.of([4, 6], [1.0, 3.0]).weights == (0.25, 0.75)
    assert [c.indices(10) for c in TeacherMixture.of([4, 6], [1.0, 1.0]).columns()] == [(0, 4, 1), (4, 10, 1)]
    with pytest.raises(ValueError, match="positive weight"):
        TeacherMixture.of([4, 6], [1.0, 0.0])
