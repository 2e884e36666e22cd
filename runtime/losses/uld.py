"""Universal Logit Distillation (ULD: Boizard et al. 2024, arXiv 2402.12030), and the matched/unmatched hybrid
of TRL's GOLD trainer: a distance between next-token distributions over two different vocabularies.

With q the student's and p the teacher's probabilities at one position (logits divided by the temperature),
sort(x) a distribution's probabilities in descending order, zero-padded to the longer vocabulary:

    uld(q, p)  = sum_k |sort(q)_k - sort(p)_k|

the L1 (1-Wasserstein) distance between the two sorted vectors, which needs no correspondence between the
vocabularies' entries. GOLD's hybrid splits each vocabulary into the M pieces both have (same string: a fixed
one-to-one map) and the rest, compares the matched pieces entry by entry and only the rest by sorting:

    hybrid(q, p) = M / V_t * JSD_beta(q[matched], p[matched]) + (1 - M / V_t) * uld(q[rest], p[rest])

with V_t the teacher's vocabulary size (GOLD's adaptive weights, used when `uld_hybrid_matched_weight` is
unset: trl/experimental/gold/gold_trainer.py:709), JSD_beta TRL's generalised JSD of the unrenormalised
sub-vectors, log taken of probabilities clamped at 1e-8 (gold_trainer.py:724-751 calls
`generalized_jsd_loss(..., logits_are_probs=True)`, 2283-2284), beta = spec.distillation.jsdBeta, and the
sorted part as above, 0 when either side has no unmatched piece (gold_trainer.py:680-704; plain ULD is
508-523). GOLD matches pieces by equal strings in `get_vocab()` (gold_trainer.py:350-370); here the shared
pieces are simpleCtkd's (`data.alignment.shared_vocabulary`: the same bytes, or both end-of-sequence).
GOLD averages over positions; here each function returns the per-position value, and the trainer divides
the sum by the batch's target tokens like every other loss.

`universal_logit_distillation` is the registered divergence `uld` (plain ULD: with one tokenizer it runs in
the fused loss like the others). simpleCtkd with loss `uld` uses `hybrid_uld_sum` at its aligned positions,
over both models' whole vocabularies, the shared pieces being the matched ones.
"""

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from kubedistill.runtime.losses.chunking import chunk_rows
from kubedistill.runtime.losses.config import KDConfig

ULD = "uld"
"""The loss's name in spec.distillation.loss (its entry point)."""

GOLD_PROBABILITY_FLOOR = 1e-8
"""GOLD takes the log of matched probabilities clamped here (gold_trainer.py:2277-2278)."""


def sorted_l1(student_probs: Tensor, teacher_probs: Tensor) -> Tensor:
    """[N, Vs], [N, Vt] probabilities -> [N]: L1 between the rows sorted descending, the shorter padded."""
    student_sorted = student_probs.sort(dim=-1, descending=True).values
    teacher_sorted = teacher_probs.sort(dim=-1, descending=True).values
    width = max(student_sorted.shape[-1], teacher_sorted.shape[-1])
    student_sorted = F.pad(student_sorted, (0, width - student_sorted.shape[-1]))
    teacher_sorted = F.pad(teacher_sorted, (0, width - teacher_sorted.shape[-1]))
    return (student_sorted - teacher_sorted).abs().sum(dim=-1)


def universal_logit_distillation(student_logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    del config
    return sorted_l1(F.softmax(student_logits, dim=-1), F.softmax(teacher_logits, dim=-1))


def _jsd_of_probabilities(student_probs: Tensor, teacher_probs: Tensor, beta: float) -> Tensor:
    """TRL's generalised JSD per row, of probability vectors that need not sum to 1 (GOLD's matched part)."""
    log_q = student_probs.clamp_min(GOLD_PROBABILITY_FLOOR).log()
    log_p = teacher_probs.clamp_min(GOLD_PROBABILITY_FLOOR).log()

    def kl(log_a: Tensor, log_b: Tensor) -> Tensor:
        return (log_a.exp() * (log_a - log_b)).sum(dim=-1)

    if beta == 0.0:
        return kl(log_p, log_q)
    if beta == 1.0:
        return kl(log_q, log_p)
    beta_t = torch.tensor(beta, dtype=log_q.dtype, device=log_q.device)
    log_m = torch.logsumexp(torch.stack([log_q + torch.log1p(-beta_t), log_p + torch.log(beta_t)]), dim=0)
    return beta * kl(log_p, log_m) + (1.0 - beta) * kl(log_q, log_m)


def hybrid_uld(student_probs: Tensor, teacher_probs: Tensor, matched: int, beta: float) -> Tensor:
    """[N, Vs], [N, Vt] probabilities whose first `matched` columns are the same pieces, in the same order,
    on both sides -> [N] GOLD's hybrid distance."""
    weight = matched / teacher_probs.shape[-1]
    distance = student_probs.new_zeros(student_probs.shape[0])
    if matched < student_probs.shape[-1] and matched < teacher_probs.shape[-1]:
        distance = (1.0 - weight) * sorted_l1(student_probs[:, matched:], teacher_probs[:, matched:])
    if matched == 0:
        return distance
    return distance + weight * _jsd_of_probabilities(
        student_probs[:, :matched], teacher_probs[:, :matched], beta
    )


def _chunk_hybrid_sum(
    student_hidden: Tensor,
    student_head: Tensor,
    teacher_hidden: Tensor,
    teacher_head: Tensor,
    matched: int,
    temperature: float,
    beta: float,
) -> Tensor:
    wide = torch.promote_types(student_hidden.dtype, torch.float32)
    student_logits = F.linear(student_hidden, student_head).to(wide) / temperature
    with torch.no_grad():
        teacher_logits = F.linear(teacher_hidden, teacher_head).to(wide) / temperature
    return hybrid_uld(student_logits.softmax(-1), teacher_logits.softmax(-1), matched, beta).sum()


def hybrid_uld_sum(
    student_hidden: Tensor,
    student_head: Tensor,
    teacher_hidden: Tensor,
    teacher_head: Tensor,
    matched: int,
    config: KDConfig,
) -> Tensor:
    """Sum over rows of `hybrid_uld` between softmax(student_hidden student_head^T / T) and the teacher's,
    the heads' first `matched` rows being the shared pieces. A chunk of rows at a time, each recomputed in
    the backward pass (activation checkpointing), so no [rows x vocab] logits outlive their chunk; the
    teacher gets no gradient."""
    rows = student_hidden.shape[0]
    total = student_hidden.new_zeros((), dtype=torch.promote_types(student_hidden.dtype, torch.float32))
    if rows == 0:
        return total + student_hidden.sum() * 0.0
    vocab = max(student_head.shape[0], teacher_head.shape[0])
    chunk = chunk_rows(config.chunk_size, rows, student_hidden.shape[1], vocab)
    for start in range(0, rows, chunk):
        part = checkpoint(
            _chunk_hybrid_sum,
            student_hidden[start : start + chunk],
            student_head,
            teacher_hidden[start : start + chunk],
            teacher_head,
            matched,
            config.temperature,
            config.jsd_beta,
            use_reentrant=False,
        )
        total = total + part
    return total
