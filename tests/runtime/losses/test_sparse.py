"""Sparse KD on a hosted teacher's top-k log-probabilities, checked against TRL's own server-distillation
loss (`ServerDistillationTrainer._compute_server_forward_kl_loss`) on float64 tensors, and its properties."""

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from trl.experimental.server_distillation.server_distillation_trainer import ServerDistillationTrainer

from kubedistill.runtime.losses.sparse import sparse_kd_loss

N, V, K = 7, 11, 4


def teacher_top(teacher_logits: torch.Tensor, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    """What an endpoint returns: the ids and log-probabilities of its k most likely tokens."""
    logprobs, ids = torch.log_softmax(teacher_logits, -1).topk(k, -1)
    return ids, logprobs


def trl_loss(student_logits: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor, add_tail: bool) -> Any:
    """TRL's loss on one sequence of N completion tokens ([1, N, ...]), every position a label; empty slots
    carry -inf, as TRL's `_topk_to_tensor` fills them."""
    trainer: Any = SimpleNamespace(
        loss_add_tail=add_tail, _reduce_divergence_loss=ServerDistillationTrainer._reduce_divergence_loss
    )
    result = {"topk_logprobs": logprobs[None], "topk_token_ids": ids[None]}
    student_log_probs = torch.log_softmax(student_logits, -1)[None]
    labels = torch.zeros(1, student_logits.shape[0], dtype=torch.long)
    return ServerDistillationTrainer._compute_server_forward_kl_loss(
        trainer, result, student_log_probs, labels
    )


@pytest.mark.parametrize("add_tail", [True, False], ids=["tail", "no-tail"])
@pytest.mark.parametrize("k", [1, K])
def test_matches_trls_server_distillation_loss_in_float64(add_tail: bool, k: int) -> None:
    generator = torch.Generator().manual_seed(k)
    student = torch.randn(N, V, dtype=torch.float64, generator=generator, requires_grad=True)
    ids, logprobs = teacher_top(torch.randn(N, V, dtype=torch.float64, generator=generator) * 2, k)
    ours = sparse_kd_loss(student, ids, logprobs, torch.ones_like(ids, dtype=torch.bool), add_tail=add_tail)
    (ours_grad,) = torch.autograd.grad(ours.mean(), student)
    theirs = trl_loss(student, ids, logprobs, add_tail)
    (theirs_grad,) = torch.autograd.grad(theirs, student)
    torch.testing.assert_close(ours.mean(), theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-10, atol=1e-12)
    if k == 1 and not add_tail:
        assert ours.abs().max() == 0, "one token renormalised is (1,) on both sides: why the tail exists"


def test_with_the_tail_it_is_the_kl_between_the_two_collapsed_distributions() -> None:
    """The formula by hand: the top-k probabilities and one bucket for the rest, on both sides."""
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(N, V, dtype=torch.float64, generator=generator)
    ids, logprobs = teacher_top(torch.randn(N, V, dtype=torch.float64, generator=generator))
    p = logprobs.exp()
    q = torch.softmax(student, -1).gather(-1, ids)
    p_full = torch.cat([p, 1 - p.sum(-1, keepdim=True)], -1)
    q_full = torch.cat([q, 1 - q.sum(-1, keepdim=True)], -1)
    expected = (p_full * (p_full.log() - q_full.log())).sum(-1)
    valid = torch.ones_like(ids, dtype=torch.bool)
    torch.testing.assert_close(
        sparse_kd_loss(student, ids, logprobs, valid), expected, rtol=1e-12, atol=1e-12
    )


def test_zero_when_the_student_is_the_teacher_and_positive_otherwise() -> None:
    generator = torch.Generator().manual_seed(2)
    teacher = torch.randn(N, V, dtype=torch.float64, generator=generator)
    ids, logprobs = teacher_top(teacher)
    valid = torch.ones_like(ids, dtype=torch.bool)
    assert sparse_kd_loss(teacher, ids, logprobs, valid).abs().max() < 1e-12
    other = torch.randn(N, V, dtype=torch.float64, generator=generator)
    assert (sparse_kd_loss(other, ids, logprobs, valid) > 0).all()


def test_slots_the_server_left_empty_count_for_nothing() -> None:
    """A server may return fewer than k alternatives: the row is the loss of the slots it filled."""
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(N, V, dtype=torch.float64, generator=generator)
    ids, logprobs = teacher_top(torch.randn(N, V, dtype=torch.float64, generator=generator))
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[:, 2:] = False
    garbage_ids = ids.masked_fill(~valid, V + 100)  # out of the vocabulary: must never be read
    garbage = logprobs.masked_fill(~valid, 5.0)
    expected = sparse_kd_loss(student, ids[:, :2], logprobs[:, :2], valid[:, :2])
    torch.testing.assert_close(sparse_kd_loss(student, garbage_ids, garbage, valid), expected)


def test_a_teacher_sure_of_its_token_leaves_a_finite_tail() -> None:
    """log p = 0 (probability 1, as servers round a confident model): TRL's clamp keeps log(1 - p) finite."""
    student = torch.zeros(1, V, dtype=torch.float32, requires_grad=True)
    ids = torch.tensor([[3]])
    loss = sparse_kd_loss(student, ids, torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and student.grad is not None and torch.isfinite(student.grad).all()
    assert student.grad[0, 3] < 0, "the student is pushed towards the teacher's token"
