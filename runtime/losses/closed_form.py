"""Divergences whose gradient with respect to the student's logits has a short closed form, so the fused
loss computes it directly instead of building an autograd graph over a [chunk x vocab] block: fewer passes
over the block and fewer blocks alive at once. Values follow `divergences` exactly (same clamp of the
teacher's log-probabilities); the fused loss tests check both against the float64 reference.

With p = softmax(teacher), q = softmax(student) and z the student's logits (already divided by T):

    fkl = KL(p || q):  d/dz = q - p
    rkl = KL(q || p):  d/dz = q * (log q - log p - rkl)
    top1Ce = -p_t log q_t, t = argmax p:  d/dz = p_t (q - onehot(t))

At temperature 1 over equal vocabularies, cross-entropy and fkl share one log_softmax of the student's
block, computed in place (`cross_entropy_and_forward_kl_`): the default loss's chunk then holds three
[chunk x vocab] blocks instead of about eight, and makes fewer passes over them.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kubedistill.runtime.losses.divergences import forward_kl, reverse_kl, teacher_log_probs
from kubedistill.runtime.losses.registry import Divergence
from kubedistill.runtime.losses.teacher_top import top1_cross_entropy, top1_cross_entropy_value_and_grad

ValueAndGrad = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""(student_logits [N, V], teacher_logits [N, V]) -> (per-token divergence [N], its gradient [N, V])."""


def forward_kl_value_and_grad(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    log_p = teacher_log_probs(teacher_logits)
    log_q = F.log_softmax(student_logits, dim=-1)
    p = log_p.exp()
    value = (p * (log_p - log_q)).sum(dim=-1)
    return value, log_q.exp_().sub_(p)


def reverse_kl_value_and_grad(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    log_p = teacher_log_probs(teacher_logits)
    log_q = F.log_softmax(student_logits, dim=-1)
    gap = log_q - log_p
    q = log_q.exp_()
    value = (q * gap).sum(dim=-1)
    return value, gap.sub_(value[:, None]).mul_(q)


CLOSED_FORMS: dict[Divergence, ValueAndGrad] = {
    forward_kl: forward_kl_value_and_grad,
    reverse_kl: reverse_kl_value_and_grad,
    top1_cross_entropy: top1_cross_entropy_value_and_grad,
}


def _log_softmax_(logits: Tensor) -> Tensor:
    """log_softmax over the last dimension, written over `logits` (one [N x V] block less)."""
    return logits.sub_(logits.logsumexp(dim=-1, keepdim=True))


def cross_entropy_and_forward_kl_(
    logits: Tensor, targets: Tensor, teacher_logits: Tensor, ce_scale: float, kd_scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The summed cross-entropy and the per-token forward KL ([N]) of `logits` [N, V] (temperature 1, the
    teacher's vocabulary as wide), and the gradient of ce_scale * CE + kd_scale * fkl, with one log_softmax
    shared by both: d/dz = ce_scale (q - onehot) + kd_scale (q - p). Overwrites `logits` and
    `teacher_logits`."""
    log_q = _log_softmax_(logits)
    ce = -log_q.gather(1, targets[:, None]).sum()
    log_p = _log_softmax_(teacher_logits).clamp_min_(torch.finfo(teacher_logits.dtype).min)
    p = log_p.exp()
    fkl = log_p.sub_(log_q).mul_(p).sum(dim=-1)
    grad = log_q.exp_().mul_(ce_scale + kd_scale).sub_(p, alpha=kd_scale)
    grad.scatter_add_(1, targets[:, None], grad.new_full((targets.shape[0], 1), -ce_scale))
    return ce, fkl, grad


def cross_entropy_value_and_grad(logits: Tensor, targets: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """The summed cross-entropy of `logits` [N, V] against `targets` [N], and `scale` times its gradient."""
    log_s = F.log_softmax(logits, dim=-1)
    value = -log_s.gather(1, targets[:, None]).sum()
    grad = log_s.exp_().mul_(scale)
    grad.scatter_add_(1, targets[:, None], grad.new_full((targets.shape[0], 1), -scale))
    return value, grad
