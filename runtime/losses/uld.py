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

Where the two tokenizations split a text differently, GOLD merges each aligned group (the shortest runs of
tokens of both sides that are the same text, `data.alignment.aligned_groups`) into one distribution per side
(`ULDLoss._merge_probabilities_with_alignment_groups`, gold_trainer.py:555-623). For a group of tokens
y_1 .. y_n, with q_k the distribution at the row predicting y_k:

    merged(v) = q_n(v) * prod_{k<n} max(q_k(y_k), 1e-8)

the probability of the group's first n - 1 tokens followed by v, by the chain rule: GOLD's "bayesian"
strategy (`uld_token_merge_strategy`, gold_config.py:81-88), which reads q_k at the row that predicts y_k as
ours always do. Its default, "observed", slices the logits one row later (gold_trainer.py:461-467), each
row then predicting the token after its own, and merges from the first row instead: on rows that predict
their own tokens it is not TRL's computation, so it is not offered. The merged vectors need not sum to 1
and go into the hybrid as they are, as in GOLD.

`universal_logit_distillation` is the registered divergence `uld` (plain ULD: with one tokenizer it runs in
the fused loss like the others). simpleCtkd with loss `uld` uses `grouped_hybrid_uld_sum` at its aligned
groups, over both models' whole vocabularies, the shared pieces being the matched ones.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    student_log_weights: Tensor | None,
    teacher_log_weights: Tensor | None,
) -> Tensor:
    wide = torch.promote_types(student_hidden.dtype, torch.float32)
    student_probs = (F.linear(student_hidden, student_head).to(wide) / temperature).softmax(-1)
    if student_log_weights is not None:
        student_probs = student_probs * student_log_weights.exp().unsqueeze(-1)
    with torch.no_grad():
        teacher_probs = (F.linear(teacher_hidden, teacher_head).to(wide) / temperature).softmax(-1)
        if teacher_log_weights is not None:
            teacher_probs = teacher_probs * teacher_log_weights.exp().unsqueeze(-1)
    return hybrid_uld(student_probs, teacher_probs, matched, beta).sum()


def hybrid_uld_sum(
    student_hidden: Tensor,
    student_head: Tensor,
    teacher_hidden: Tensor,
    teacher_head: Tensor,
    matched: int,
    config: KDConfig,
    student_log_weights: Tensor | None = None,
    teacher_log_weights: Tensor | None = None,
) -> Tensor:
    """Sum over rows of `hybrid_uld` between softmax(student_hidden student_head^T / T) and the teacher's,
    the heads' first `matched` rows being the shared pieces, each row's probabilities multiplied by the
    exponential of its log weight where given. A chunk of rows at a time, each recomputed in the backward
    pass (activation checkpointing), so no [rows x vocab] logits outlive their chunk; the teacher gets no
    gradient."""
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
            None if student_log_weights is None else student_log_weights[start : start + chunk],
            None if teacher_log_weights is None else teacher_log_weights[start : start + chunk],
            use_reentrant=False,
        )
        total = total + part
    return total


# -- aligned groups ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupRows:
    """One side's aligned groups (`data.alignment.aligned_groups`) as rows of its hidden states: each group's
    last token, whose distribution stands for the group, and the group's earlier tokens with their targets
    and the index of their group."""

    last: Tensor
    """[G]"""
    earlier: Tensor
    """[E]"""
    earlier_targets: Tensor
    """[E]"""
    earlier_group: Tensor
    """[E] in 0..G-1"""

    @classmethod
    def of(cls, groups: Sequence[Sequence[int]], targets: Sequence[int]) -> "GroupRows":
        """From each group's rows (ascending) and every row's target."""
        earlier = [(row, g) for g, rows in enumerate(groups) for row in rows[:-1]]
        return cls(
            torch.tensor([rows[-1] for rows in groups], dtype=torch.long),
            torch.tensor([row for row, _ in earlier], dtype=torch.long),
            torch.tensor([targets[row] for row, _ in earlier], dtype=torch.long),
            torch.tensor([g for _, g in earlier], dtype=torch.long),
        )

    def after_single_tokens(self, rows: Tensor) -> "GroupRows":
        """Groups of one token at `rows`, then these."""
        return GroupRows(
            torch.cat([rows, self.last]),
            self.earlier,
            self.earlier_targets,
            self.earlier_group + rows.numel(),
        )

    def only(self, kept: Tensor) -> "GroupRows":
        """The groups where `kept` ([G] bool) holds, numbered anew."""
        number = kept.long().cumsum(0) - 1
        earlier = kept.index_select(0, self.earlier_group)
        return GroupRows(
            self.last[kept],
            self.earlier[earlier],
            self.earlier_targets[earlier],
            number[self.earlier_group[earlier]],
        )


def _chunk_target_log_probabilities(
    hidden: Tensor, head: Tensor, targets: Tensor, temperature: float
) -> Tensor:
    logits = F.linear(hidden, head).to(torch.promote_types(hidden.dtype, torch.float32)) / temperature
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def chain_rule_log_weights(hidden: Tensor, head: Tensor, groups: GroupRows, config: KDConfig) -> Tensor:
    """[G]: per group, the log of the product over its earlier tokens of max(p(target), 1e-8), p the softmax
    at the token's row at the temperature. Times the last token's distribution, the group's merged one:
    the probability of the group's earlier tokens followed by each piece, by the chain rule (GOLD's
    "bayesian" merge: gold_trainer.py:600-615, the probabilities clamped at 1e-8 as there)."""
    rows = groups.earlier.numel()
    log_probabilities = hidden.new_zeros(rows, dtype=torch.promote_types(hidden.dtype, torch.float32))
    if rows > 0:
        chunk = chunk_rows(config.chunk_size, rows, hidden.shape[1], head.shape[0])
        parts = [
            checkpoint(
                _chunk_target_log_probabilities,
                hidden.index_select(0, groups.earlier[start : start + chunk]),
                head,
                groups.earlier_targets[start : start + chunk],
                config.temperature,
                use_reentrant=False,
            )
            for start in range(0, rows, chunk)
        ]
        log_probabilities = torch.cat(parts)
    floored = log_probabilities.clamp_min(math.log(GOLD_PROBABILITY_FLOOR))
    return floored.new_zeros(groups.last.numel()).index_add(0, groups.earlier_group, floored)


def grouped_hybrid_uld_sum(
    student_hidden: Tensor,
    student_head: Tensor,
    student: GroupRows,
    teacher_hidden: Tensor,
    teacher_head: Tensor,
    teacher: GroupRows,
    shared: tuple[Tensor, Tensor],
    config: KDConfig,
) -> Tensor:
    """Sum over aligned groups of `hybrid_uld` between both sides' merged distributions (a group of one token
    is that token's distribution), over both whole vocabularies; `shared` is the shared pieces' (student,
    teacher) ids, pairwise, GOLD's matched ones."""
    student_weights = chain_rule_log_weights(student_hidden, student_head, student, config)
    with torch.no_grad():
        teacher_weights = chain_rule_log_weights(teacher_hidden, teacher_head, teacher, config)
    return hybrid_uld_sum(
        student_hidden.index_select(0, student.last),
        student_head.index_select(0, _shared_first(shared[0], student_head.shape[0])),
        teacher_hidden.index_select(0, teacher.last),
        teacher_head.index_select(0, _shared_first(shared[1], teacher_head.shape[0])),
        shared[0].numel(),
        config,
        student_weights,
        teacher_weights,
    )


def _shared_first(shared: Tensor, vocab: int) -> Tensor:
    """Row order of a head: the shared pieces' ids in the given order, then every other row in id order."""
    rest = torch.ones(vocab, dtype=torch.bool, device=shared.device)
    rest[shared] = False
    return torch.cat([shared, rest.nonzero().squeeze(-1)])
