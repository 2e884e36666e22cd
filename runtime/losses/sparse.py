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
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

from kubedistill.runtime.losses.chunking import chunk_rows
from kubedistill.runtime.losses.fused import kept_gradients
from kubedistill.runtime.losses.output import IGNORE_INDEX, LossOutput

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


def fused_sparse_kd_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    labels: Tensor,
    top_ids: Tensor,
    top_logprobs: Tensor,
    *,
    kd_ratio: float,
    add_tail: bool,
    normalizer: float,
    chunk_size: int | None,
) -> LossOutput:
    """((1 - kd_ratio) * CE + kd_ratio * sparse KD) / normalizer from hidden states, chunk by chunk as
    `fused_kd_loss` does (gradients in the forward, no [tokens x vocab] beyond a chunk).

    student_hidden [N, d], student_weight [V, d], labels [N] (IGNORE_INDEX: not trained), top_ids and
    top_logprobs [N, k] (id -1: a slot the teacher left empty; a row of them: no teacher there, CE only)."""
    kept = (labels != IGNORE_INDEX).nonzero().squeeze(-1)
    loss, kd_sum, ce_sum, kd_tokens = _FusedSparseKD.apply(
        student_hidden,
        student_weight,
        kept,
        labels.index_select(0, kept),
        top_ids.index_select(0, kept),
        top_logprobs.index_select(0, kept),
        kd_ratio,
        add_tail,
        normalizer,
        chunk_size,
    )
    per_position = kd_tokens.new_zeros(labels.shape[0]).index_copy_(0, kept, kd_tokens)
    return LossOutput(
        loss=loss, kd_sum=kd_sum, ce_sum=ce_sum, num_tokens=kept.numel(), kd_per_position=per_position
    )


class _FusedSparseKD(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        student_hidden: Tensor,
        student_weight: Tensor,
        kept: Tensor,
        targets: Tensor,
        top_ids: Tensor,
        top_logprobs: Tensor,
        kd_ratio: float,
        add_tail: bool,
        normalizer: float,
        chunk_size: int | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        hidden = student_hidden.index_select(0, kept)
        compute_dtype = torch.promote_types(student_weight.dtype, torch.float32)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(student_weight, dtype=compute_dtype)
        ce_sum = torch.zeros((), dtype=compute_dtype, device=hidden.device)
        kd_tokens = hidden.new_zeros(hidden.shape[0], dtype=compute_dtype)
        rows = chunk_rows(chunk_size, hidden.shape[0], hidden.shape[1], student_weight.shape[0])
        for start in range(0, hidden.shape[0], rows):
            chunk = slice(start, start + rows)
            logits = F.linear(hidden[chunk], student_weight).to(compute_dtype).requires_grad_()
            ids = top_ids[chunk]
            valid = ids >= 0
            with torch.enable_grad():
                # At kd_ratio 1 the cross-entropy is only reported, so it stays out of the graph.
                ce = F.cross_entropy(
                    logits if kd_ratio < 1.0 else logits.detach(), targets[chunk], reduction="sum"
                )
                kd = sparse_kd_loss(logits, ids, top_logprobs[chunk], valid, add_tail=add_tail)
                # A row the teacher left empty (end of turn) has no distribution to compare with.
                kd = torch.where(valid.any(-1), kd, torch.zeros_like(kd))
                objective = ce * (1.0 - kd_ratio) + kd.sum() * kd_ratio
                (grad_logits,) = torch.autograd.grad(objective / normalizer, logits)
            ce_sum += ce.detach()
            kd_tokens[chunk] = kd.detach()
            grad_logits = grad_logits.to(student_weight.dtype)
            torch.mm(grad_logits, student_weight, out=grad_hidden[chunk])
            grad_weight += grad_logits.T.to(compute_dtype) @ hidden[chunk].to(compute_dtype)
        kd_sum = kd_tokens.sum()
        ctx.save_for_backward(kept, grad_hidden, grad_weight)
        ctx.hidden_shape = student_hidden.shape
        ctx.weight_dtype = student_weight.dtype
        ctx.mark_non_differentiable(kd_sum, ce_sum, kd_tokens)
        return ((1.0 - kd_ratio) * ce_sum + kd_ratio * kd_sum) / normalizer, kd_sum, ce_sum, kd_tokens

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad_loss: Tensor, _grad_kd: Tensor, _grad_ce: Tensor, _grad_tokens: Tensor
    ) -> tuple[Tensor | None, ...]:
        grad_hidden, grad_weight = kept_gradients(ctx, grad_loss)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None
