"""Per-token divergences between the teacher's and the student's next-token distributions.

Every function here has the signature a loss plugin must have,

    (student_logits [N, V], teacher_logits [N, V], config: KDConfig) -> [N],

takes logits already divided by the temperature and computes in their dtype (float32 or float64). With
p = softmax(teacher_logits), q = softmax(student_logits), KL(a || b) = sum_v a_v (log a_v - log b_v) and
0 log 0 = 0:

    fkl  = KL(p || q)
    rkl  = KL(q || p)
    jsd  = KL(p || q)                                   if beta = 0
           KL(q || p)                                   if beta = 1
           beta KL(p || m) + (1 - beta) KL(q || m)      otherwise, m = beta p + (1 - beta) q
    tvd  = 1/2 sum_v |p_v - q_v|
    skl  = KL(p || lambda p + (1 - lambda) q)
    srkl = KL(q || lambda q + (1 - lambda) p)
    akl  = g_head / (g_head + g_tail) fkl + g_tail / (g_head + g_tail) rkl

with beta = config.jsd_beta in TRL's convention (`GKDTrainer.generalized_jsd_loss`), lambda =
config.skew_lambda, and, for akl (Wu et al. 2024, arXiv 2404.02657), alpha = config.adaptive_alpha: sort the
vocabulary by p descending; the head is the top token plus every further token whose cumulative p (itself
included) is at most alpha, the tail is the rest; g_head and g_tail are the sums of |p_v - q_v| over them.
Mixtures are formed in log space (logaddexp), so no probability is rounded to zero before its log is taken.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kubedistill.runtime.losses.config import KDConfig


def teacher_log_probs(teacher_logits: Tensor) -> Tensor:
    # A teacher token of probability exactly zero has log p = -inf, and 0 * -inf is NaN; at the dtype's
    # lowest finite value the same product is 0, which is the 0 log 0 = 0 convention.
    log_p = F.log_softmax(teacher_logits, dim=-1)
    lowest = torch.finfo(log_p.dtype).min
    # In place where autograd allows it: one [tokens x vocab] tensor less at the peak.
    return log_p.clamp_min(lowest) if log_p.requires_grad else log_p.clamp_min_(lowest)


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    return (log_a.exp() * (log_a - log_b)).sum(dim=-1)


def _log(weight: float) -> float:
    return math.log(weight) if weight > 0.0 else -math.inf


def _log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(weight_a a + (1 - weight_a) b). A weight of 0 or 1 gives one side exactly (logaddexp(x, -inf) is
    x, with gradient 0 to the other side), and the result still depends on both, so a loss built on it keeps
    its graph at the limits."""
    return torch.logaddexp(log_a + _log(weight_a), log_b + _log(1.0 - weight_a))


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    return _kl(teacher_log_probs(teacher_logits), F.log_softmax(student_logits, dim=-1))


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    return _kl(F.log_softmax(student_logits, dim=-1), teacher_log_probs(teacher_logits))


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    beta = config.jsd_beta
    # TRL defines the limits as the two KLs, not as the limit of the mixture formula (which is 0).
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, config)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, config)
    log_p = teacher_log_probs(teacher_logits)
    log_q = F.log_softmax(student_logits, dim=-1)
    log_m = _log_mixture(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)


def total_variation(student_logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    p = F.softmax(teacher_logits, dim=-1)
    q = F.softmax(student_logits, dim=-1)
    return 0.5 * (p - q).abs().sum(dim=-1)


def skewed_kl(student_logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    log_p = teacher_log_probs(teacher_logits)
    log_q = F.log_softmax(student_logits, dim=-1)
    return _kl(log_p, _log_mixture(log_p, log_q, config.skew_lambda))


def skewed_reverse_kl(student_logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    log_p = teacher_log_probs(teacher_logits)
    log_q = F.log_softmax(student_logits, dim=-1)
    return _kl(log_q, _log_mixture(log_q, log_p, config.skew_lambda))


def adaptive_kl(student_logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    """Adaptive KL. The head/tail weights are constants of the gradient, as in the original code (Wu et al.
    compute them from a detached student softmax; KDFlow detaches g_head and g_tail): only fkl and rkl are
    differentiated. Identical distributions give 0/0 weights, taken as 0 (both KLs are 0 there)."""
    log_p = teacher_log_probs(teacher_logits)
    log_q = F.log_softmax(student_logits, dim=-1)
    with torch.no_grad():
        gap = (log_p.exp() - log_q.exp()).abs()
        p_sorted, order = log_p.exp().sort(dim=-1, descending=True)
        in_tail = p_sorted.cumsum(dim=-1) > config.adaptive_alpha
        in_tail[..., 0] = False
        g_tail = gap.gather(-1, order).masked_fill_(~in_tail, 0.0).sum(dim=-1)
        g_total = gap.sum(dim=-1)
        g_head = g_total - g_tail
        g_total = g_total.clamp_min(torch.finfo(g_total.dtype).tiny)
    return (g_head * _kl(log_p, log_q) + g_tail * _kl(log_q, log_p)) / g_total
