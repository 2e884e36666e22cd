"""The loss contract, checked on the reference and, through the same tests, on the fused implementation."""

import math
from dataclasses import replace

import pytest
import torch

from kubedistill.runtime.losses import IGNORE_INDEX, KDConfig, reference_kd_loss
from tests.runtime.losses.problems import DIVERGENCES, IMPLEMENTATIONS, LOSSES, KDLoss, make_problem

implementations = pytest.mark.parametrize(
    "implementation", IMPLEMENTATIONS.values(), ids=IMPLEMENTATIONS.keys()
)


def test_loss_weighs_cross_entropy_and_divergence_sums_by_kd_ratio_over_the_normalizer() -> None:
    # Uniform student over 4 tokens: CE = log 4 per token, and forward KL against a one-hot-ish teacher
    # p = (1, 0, 0, 0) is log 4 per token as well; the second token is ignored.
    student = torch.zeros(3, 4, dtype=torch.float64)
    teacher = torch.tensor([[0.0, -math.inf, -math.inf, -math.inf]] * 3, dtype=torch.float64)
    labels = torch.tensor([1, IGNORE_INDEX, 2])
    out = reference_kd_loss(student, teacher, labels, KDConfig(loss="fkl", kd_ratio=0.25), normalizer=8.0)

    assert out.num_tokens == 2
    assert out.ce_sum.item() == pytest.approx(2 * math.log(4))
    assert out.kd_sum.item() == pytest.approx(2 * math.log(4))
    assert out.loss.item() == pytest.approx((0.75 * 2 * math.log(4) + 0.25 * 2 * math.log(4)) / 8.0)


@pytest.mark.parametrize("kd_ratio", [0.0, 0.5, 1.0])
def test_without_a_teacher_the_loss_is_the_whole_cross_entropy(kd_ratio: float) -> None:
    student = torch.zeros(2, 5, dtype=torch.float64)
    labels = torch.tensor([0, 3])
    out = reference_kd_loss(student, None, labels, KDConfig(kd_ratio=kd_ratio), normalizer=4.0)

    assert out.kd_sum.item() == 0.0
    assert out.loss.item() == pytest.approx(2 * math.log(5) / 4.0)


def test_temperature_divides_the_logits_of_the_divergence_but_not_of_the_cross_entropy() -> None:
    problem = make_problem()
    student = problem.student_hidden @ problem.student_weight.T
    teacher = problem.teacher_hidden @ problem.teacher_weight.T
    hot = reference_kd_loss(student, teacher, problem.labels, KDConfig(temperature=2.0), 1.0)
    cold = reference_kd_loss(student / 2.0, teacher / 2.0, problem.labels, KDConfig(temperature=1.0), 1.0)

    torch.testing.assert_close(hot.kd_sum, cold.kd_sum)
    assert hot.ce_sum.item() != pytest.approx(cold.ce_sum.item())


def test_divergence_ignores_student_columns_past_the_teacher_vocabulary() -> None:
    problem = make_problem(student_vocab=50, teacher_vocab=45)
    student = problem.student_hidden @ problem.student_weight.T
    teacher = problem.teacher_hidden @ problem.teacher_weight.T
    shifted = student.clone()
    shifted[:, 45:] += 3.0
    config = KDConfig(loss="rkl")

    before = reference_kd_loss(student, teacher, problem.labels, config, 1.0)
    after = reference_kd_loss(shifted, teacher, problem.labels, config, 1.0)

    torch.testing.assert_close(after.kd_sum, before.kd_sum)
    assert after.ce_sum.item() != pytest.approx(before.ce_sum.item())


@implementations
@pytest.mark.parametrize("loss", LOSSES)
def test_masked_positions_contribute_nothing(implementation: KDLoss, loss: str) -> None:
    problem = make_problem()
    masked = problem.labels == IGNORE_INDEX
    noisy = replace(
        problem,
        student_hidden=problem.student_hidden + 5.0 * masked[:, None],
        teacher_hidden=problem.teacher_hidden - 5.0 * masked[:, None],
    )
    config = KDConfig(loss=loss, kd_ratio=0.5, chunk_size=8)

    out, grad_hidden, grad_weight = problem.run(implementation, config)
    noisy_out, noisy_grad_hidden, noisy_grad_weight = noisy.run(implementation, config)

    torch.testing.assert_close(noisy_out.loss, out.loss)
    torch.testing.assert_close(noisy_grad_weight, grad_weight)
    torch.testing.assert_close(noisy_grad_hidden, grad_hidden)
    assert not grad_hidden[masked].any()
    assert grad_hidden[~masked].abs().sum(dim=-1).min() > 0


@implementations
@pytest.mark.parametrize("loss", DIVERGENCES)
def test_divergence_is_zero_when_the_student_is_the_teacher(implementation: KDLoss, loss: str) -> None:
    problem = make_problem(student_vocab=45, teacher_vocab=45, teacher_dim=16)
    twin = replace(problem, teacher_hidden=problem.student_hidden, teacher_weight=problem.student_weight)
    out, _, grad_weight = twin.run(implementation, KDConfig(loss=loss, kd_ratio=1.0, temperature=2.0))

    assert out.kd_sum.item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(grad_weight, torch.zeros_like(grad_weight), atol=1e-12, rtol=0.0)


@implementations
@pytest.mark.parametrize("loss", ["fkl", "jsd", "akl"])
def test_micro_batches_with_the_global_normalizer_add_up_to_the_whole_batch(
    implementation: KDLoss, loss: str
) -> None:
    problem = make_problem(tokens=40)
    config = KDConfig(loss=loss, kd_ratio=0.4, chunk_size=6)
    whole = problem.fresh()
    args = (whole.teacher_hidden, whole.teacher_weight)
    expected = implementation(whole.student_hidden, whole.student_weight, *args, whole.labels, config, 29.0)
    expected.loss.backward()

    split = problem.fresh()
    total = 0.0
    for rows in (slice(0, 12), slice(12, 13), slice(13, 40)):  # the middle one is all ignored
        part = implementation(
            split.student_hidden[rows],
            split.student_weight,
            split.teacher_hidden[rows],
            split.teacher_weight,
            split.labels[rows],
            config,
            29.0,
        )
        part.loss.backward()
        total += part.loss.item()

    assert total == pytest.approx(expected.loss.item(), rel=1e-12)
    torch.testing.assert_close(split.student_weight.grad, whole.student_weight.grad)
    torch.testing.assert_close(split.student_hidden.grad, whole.student_hidden.grad)
