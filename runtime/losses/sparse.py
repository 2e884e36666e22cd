"""Sparse KD from a hosted teacher's log-probabilities: the divergence over the teacher's top-k tokens, plus
one bucket for the rest of the vocabulary, TRL's server distillation (trl 1.16.0,
`trl/experimental/server_distillation/server_distillation_trainer.py:500-542`,
`_compute_server_forward_kl_loss`, with `_add_tail_bucket` at :72-82 and `_jsd_divergence` at :28-69 for
beta 0).

An OpenAI-compatible endpoint returns, at every response token, the log-probabilities log p_j of its k most
likely tokens T_1..T_k (`top_logprobs`), not its distribution. With log q the student's log-softmax over its
whole vocabulary (the same vocabulary: the ids T_j are the student's):

    add tail:   P = (p_1, .., p_k, 1 - sum_j p_j)     Q = (q_T1, .., q_Tk, 1 - sum_j q_Tj)
    no tail:    P = softmax(log p_T),                  Q = softmax(log q_T)      (both renormalised on T)

    sparseKd = KL(P || Q) = sum_i P_i (log P_i - log Q_i)

The tail bucket keeps the loss honest when k is small: with k = 1 and no tail both sides renormalise to
(1,) and the loss is 0 whatever the student does. Both sums are clamped below 1 (log-sum at most -1e-7) as
TRL does, so a teacher sure of its top token leaves a finite tail. Slots a server left empty (fewer than k
alternatives) carry a False mask and count for nothing.
"""

import torch
from torch import Tensor

TAIL_LOG_SUM_MAX = -1e-7
"""TRL's clamp of the top-k log-mass (`server_distillation_trainer.py:79`): the tail keeps at least ~1e-7."""


def sparse_kd_loss(
    student_logits: Tensor,
    top_ids: Tensor,
    top_logprobs: Tensor,
    valid: Tensor,
    *,
    add_tail: bool = True,
) -> Tensor:
    """Per-position KL(teacher || student) on the teacher's top-k (+ tail); [N].

    student_logits [N, V]; top_ids [N, k] student token ids; top_logprobs [N, k] the teacher's
    log-probabilities of them; valid [N, k] the slots the teacher filled."""
    # At least float32: a bf16 student's log-probabilities of rare tokens would lose the tail's mass.
    log_q = torch.log_softmax(student_logits.to(torch.promote_types(student_logits.dtype, torch.float32)), -1)
    student = log_q.gather(-1, top_ids.masked_fill(~valid, 0))
    teacher = top_logprobs.to(log_q.dtype)
    empty = torch.tensor(float("-inf"), dtype=log_q.dtype, device=log_q.device)
    student = torch.where(valid, student, empty)
    teacher = torch.where(valid, teacher, empty)
    if add_tail:
        student, support = _with_tail(student, valid)
        teacher, _ = _with_tail(teacher, valid)
    else:
        support = valid
        student = student - torch.logsumexp(student, -1, keepdim=True)
        teacher = teacher - torch.logsumexp(teacher, -1, keepdim=True)
    zero = torch.zeros((), dtype=log_q.dtype, device=log_q.device)
    terms = teacher.exp() * (torch.where(support, teacher, zero) - torch.where(support, student, zero))
    return torch.where(support, terms, zero).sum(-1)


def _with_tail(log_probs: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """log_probs with a (k+1)-th entry log(1 - sum exp(log_probs)), and the mask with it."""
    log_sum = torch.logsumexp(log_probs, -1, keepdim=True).clamp(max=TAIL_LOG_SUM_MAX)
    tail = torch.log(-torch.expm1(log_sum))
    return torch.cat([log_probs, tail], -1), torch.cat([valid, torch.ones_like(valid[:, :1])], -1)
