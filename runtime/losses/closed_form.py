"""Divergences whose gradient with respect to the student's logits has a short closed form, so the fused
loss computes it directly instead of building an autograd graph over a [chunk x vocab] block: fewer passes
over the block and fewer blocks alive at once. Values follow `divergences` exactly (same clamp of the
teacher's log-probabilities); the fused loss tests check both against the float64 reference.

With p = softmax(teacher), q = softmax(student) and z the student's logits (already divided by T):

    fkl = KL(p || q):  d/dz = q - p
    rkl = KL(q || p):  d/dz = q * (log q - log p - rkl)
"""

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from kubedistill.runtime.losses.divergences import forward_kl, reverse_kl, teacher_log_probs
from kubedistill.runtime.losses.registry import Divergence

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
}


def cross_entropy_value_and_grad(logits: Tensor, targets: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """The summed cross-entropy of `logits` [N, V] against `targets` [N], and `scale` times its gradient."""
    log_s = F.log_softmax(logits, dim=-1)
    value = -log_s.gather(1, targets[:, None]).sum()
    grad = log_s.exp_().mul_(scale)
    grad.scatter_add_(1, targets[:, None], grad.new_full((targets.shape[0], 1), -scale))
    return value, grad
