"""The distillation loss from hidden states and lm_head weights, chunk by chunk, gradients in the forward;
and the eval's top-1 agreement, chunk by chunk the same way, so no [tokens x vocab] matrix exists.

Same contract as `reference_kd_loss` applied to `student_hidden @ student_weight.T` and
`teacher_hidden @ teacher_weight.T`, but neither model's [tokens x vocab] logits ever exist in full: for
each chunk of unmasked tokens (`config.chunk_size`, or as many as `chunking` chooses from the shapes) the
forward pass computes both models' logits, the per-token loss through the same divergence function, its
gradient d(logits) (in closed form for
cross-entropy, fkl and rkl, see `closed_form`; with `torch.autograd.grad` for the other divergences and for
plugins), and from it the chunk's d(hidden) = dz @ W and its share of dW += dz^T @ h. Nothing of a chunk
outlives it, and the backward pass only hands out the two gradients (the idea of Liger's fused linear JSD,
in plain torch).
The peak is therefore a few [chunk x vocab] tensors instead of a few [tokens x vocab] ones.

The teacher gets no gradient. The student weight gets a plain gradient, which is all that weight tying
(it is the embedding matrix too) and FSDP2 (it is the unsharded parameter inside the module's forward) ask.
"""

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

from kubedistill.runtime.losses.chunking import chunk_rows
from kubedistill.runtime.losses.closed_form import (
    CLOSED_FORMS,
    cross_entropy_and_forward_kl_,
    cross_entropy_value_and_grad,
)
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.losses.divergences import forward_kl
from kubedistill.runtime.losses.mixture import TeacherMixture, mixed_teacher_logits
from kubedistill.runtime.losses.output import IGNORE_INDEX, LossOutput
from kubedistill.runtime.losses.registry import Divergence, get_loss


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16/fp16 logits lose too much in a softmax over 150k entries; float32 and float64 stay as they are.
    return torch.promote_types(dtype, torch.float32)


def _tempered(logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    """The student's logits that the divergence compares: over the teacher's vocabulary, divided by T."""
    student = logits[:, : teacher_logits.shape[-1]]
    return student / config.temperature if config.temperature != 1.0 else student


def _chunk_logits_grad(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    divergence: Divergence | None,
    config: KDConfig,
    ce_scale: float,
    kd_scale: float,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """d(ce_scale * CE + kd_scale * KD)/d(student logits) of one chunk, with the chunk's CE sum and its
    per-token KD ([chunk]; None without a teacher)."""
    logits = F.linear(hidden, weight).to(_compute_dtype(hidden.dtype))
    if divergence is None or teacher_logits is None or divergence in CLOSED_FORMS:
        return _closed_form_chunk(logits, targets, teacher_logits, divergence, config, ce_scale, kd_scale)
    logits.requires_grad_()
    with torch.enable_grad():
        # At kd_ratio 1 the cross-entropy is only reported, so it stays out of the graph.
        ce = F.cross_entropy(logits if ce_scale > 0.0 else logits.detach(), targets, reduction="sum")
        objective = ce * ce_scale
        kd = None
        if divergence is not None and teacher_logits is not None:
            kd = divergence(_tempered(logits, teacher_logits, config), teacher_logits, config)
            objective = objective + kd.sum() * kd_scale
        (grad_logits,) = torch.autograd.grad(objective, logits)
    return grad_logits, ce.detach(), None if kd is None else kd.detach()


def _closed_form_chunk(
    logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    divergence: Divergence | None,
    config: KDConfig,
    ce_scale: float,
    kd_scale: float,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """`_chunk_logits_grad` for cross-entropy alone or with one of `CLOSED_FORMS`, without autograd."""
    shared = config.temperature == 1.0 and teacher_logits is not None
    if shared and divergence is forward_kl and teacher_logits.shape[-1] == logits.shape[-1]:
        ce, kd, grad = cross_entropy_and_forward_kl_(logits, targets, teacher_logits, ce_scale, kd_scale)
        return grad, ce, kd
    ce, grad = cross_entropy_value_and_grad(logits, targets, ce_scale)
    kd = None
    if divergence is not None and teacher_logits is not None:
        kd, kd_grad = CLOSED_FORMS[divergence](_tempered(logits, teacher_logits, config), teacher_logits)
        # d/dz of the divergence of z / T is its gradient at z / T, divided by T.
        grad[:, : teacher_logits.shape[-1]].add_(kd_grad, alpha=kd_scale / config.temperature)
    return grad, ce, kd


class _FusedKDLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        student_hidden: Tensor,
        student_weight: Tensor,
        teacher_hidden: Tensor | None,
        teacher_weight: Tensor | None,
        kept: Tensor,
        targets: Tensor,
        config: KDConfig,
        normalizer: float,
        divergence: Divergence | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        ce_weight, kd_weight = (
            (1.0 - config.kd_ratio, config.kd_ratio) if divergence is not None else (1.0, 0.0)
        )
        hidden = student_hidden.index_select(0, kept)
        compute_dtype = _compute_dtype(student_weight.dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(student_weight, dtype=compute_dtype)
        ce_sum = torch.zeros((), dtype=compute_dtype, device=hidden.device)
        kd_sum = torch.zeros_like(ce_sum)
        # Each kept token's divergence, kept for the per-sample figures (`per_sample_means`): [tokens]
        # floats next to the [chunk x vocab] blocks, and no pass over them beyond the one the sum makes.
        kd_tokens = hidden.new_zeros(hidden.shape[0], dtype=compute_dtype)
        teacher_rows = teacher_head = None
        if divergence is not None and teacher_hidden is not None and teacher_weight is not None:
            teacher_rows = teacher_hidden.index_select(0, kept).to(teacher_weight.dtype)
            teacher_head = teacher_weight[: min(student_weight.shape[0], teacher_weight.shape[0])]
        rows = chunk_rows(config.chunk_size, hidden.shape[0], hidden.shape[1], student_weight.shape[0])
        for start in range(0, hidden.shape[0], rows):
            chunk = slice(start, start + rows)
            teacher_logits = None
            if teacher_rows is not None and teacher_head is not None:
                if config.teachers is not None:
                    teacher_logits = mixed_teacher_logits(
                        teacher_rows[chunk], teacher_head, config.teachers, compute_dtype, config.temperature
                    )
                else:
                    teacher_logits = F.linear(teacher_rows[chunk], teacher_head).to(compute_dtype)
                    if config.temperature != 1.0:
                        teacher_logits.div_(config.temperature)
            grad_logits, ce, kd = _chunk_logits_grad(
                hidden[chunk],
                student_weight,
                targets[chunk],
                teacher_logits,
                divergence,
                config,
                ce_weight / normalizer,
                kd_weight / normalizer,
            )
            del teacher_logits
            ce_sum += ce
            if kd is not None:
                kd_sum += kd.sum()
                kd_tokens[chunk] = kd
            grad_logits = grad_logits.to(student_weight.dtype)
            torch.mm(grad_logits, student_weight, out=grad_hidden[chunk])
            if grad_weight.dtype == student_weight.dtype:
                grad_weight.addmm_(grad_logits.T, hidden[chunk])
            else:
                grad_weight += grad_logits.T @ hidden[chunk]
        ctx.save_for_backward(kept, grad_hidden, grad_weight)
        ctx.hidden_shape = student_hidden.shape
        ctx.weight_dtype = student_weight.dtype
        ctx.mark_non_differentiable(kd_sum, ce_sum, kd_tokens)
        return (ce_weight * ce_sum + kd_weight * kd_sum) / normalizer, kd_sum, ce_sum, kd_tokens

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad_loss: Tensor, _grad_kd: Tensor, _grad_ce: Tensor, _grad_tokens: Tensor
    ) -> tuple[Tensor | None, ...]:
        grad_hidden, grad_weight = kept_gradients(ctx, grad_loss)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None


def kept_gradients(ctx: FunctionCtx, grad_loss: Tensor) -> tuple[Tensor, Tensor]:
    """The student's hidden-state and head gradients of a loss whose forward computed them for the `kept`
    rows only and saved (kept, their hidden gradients, the head's gradient): zero for the other rows, scaled
    by the upstream gradient."""
    kept, grad_hidden_kept, grad_weight = ctx.saved_tensors
    grad_hidden = grad_hidden_kept.new_zeros(ctx.hidden_shape)
    grad_hidden.index_copy_(0, kept, grad_hidden_kept)
    grad_weight = grad_weight.to(ctx.weight_dtype)
    # Under gradient accumulation the upstream gradient is 1; skipping the multiply saves a [V x d] pass.
    if not torch.equal(grad_loss, torch.ones_like(grad_loss)):
        grad_hidden = grad_hidden * grad_loss
        grad_weight = grad_weight * grad_loss
    return grad_hidden, grad_weight


def fused_kd_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor | None,
    teacher_weight: Tensor | None,
    labels: Tensor,
    config: KDConfig,
    normalizer: float,
) -> LossOutput:
    """student_hidden [N, ds], student_weight [Vs, ds], teacher_hidden [N, dt] and teacher_weight [Vt, dt]
    (both None: cross-entropy only), labels [N]. Hidden states must be final, post-norm ones."""
    if (teacher_hidden is None) != (teacher_weight is None):
        raise ValueError("teacher_hidden and teacher_weight must be given together")
    with_kd = teacher_hidden is not None and config.kd_ratio > 0.0
    divergence = get_loss(config.loss) if with_kd else None
    kept = (labels != IGNORE_INDEX).nonzero().squeeze(-1)
    loss, kd_sum, ce_sum, kd_tokens = _FusedKDLoss.apply(
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        kept,
        labels.index_select(0, kept),
        config,
        normalizer,
        divergence,
    )
    per_position = None
    if divergence is not None:
        per_position = kd_tokens.new_zeros(labels.shape[0]).index_copy_(0, kept, kd_tokens)
    return LossOutput(
        loss=loss, kd_sum=kd_sum, ce_sum=ce_sum, num_tokens=kept.numel(), kd_per_position=per_position
    )


@torch.no_grad()
def top1_agreements(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: torch.Tensor,
    chunk_size: int | None,
    teachers: TeacherMixture | None = None,
) -> int:
    """Positions where student and teacher rank the same next token first (over their shared vocabulary);
    with several teachers, the token their mixture ranks first."""
    vocab = min(student_head.shape[0], teacher_head.shape[0])
    agreements = 0
    chunk = chunk_rows(chunk_size, student_hidden.shape[0], student_hidden.shape[1], vocab)
    for start in range(0, student_hidden.shape[0], chunk):
        stop = start + chunk
        student_top = (student_hidden[start:stop] @ student_head[:vocab].T).argmax(dim=-1)
        if teachers is not None:
            rows, heads = teacher_hidden[start:stop], teacher_head[:vocab]
            teacher_top = mixed_teacher_logits(
                rows, heads, teachers, _compute_dtype(heads.dtype), 1.0
            ).argmax(dim=-1)
        else:
            teacher_top = (teacher_hidden[start:stop] @ teacher_head[:vocab].T).argmax(dim=-1)
        agreements += int((student_top == teacher_top).sum().item())
    return agreements
