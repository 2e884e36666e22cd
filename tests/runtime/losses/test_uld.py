"""ULD and GOLD's hybrid, checked against TRL's own `ULDLoss` (trl.experimental.gold) on float64 tensors."""

from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from trl.experimental.gold.gold_trainer import ULDLoss

from kubedistill.runtime.data.alignment import Span, aligned_exactly, aligned_groups
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.losses.uld import (
    GroupRows,
    grouped_hybrid_uld_sum,
    hybrid_uld,
    hybrid_uld_sum,
    sorted_l1,
    universal_logit_distillation,
)


def gold(beta: float = 0.5, hybrid: bool = False, merged: bool = False, temperature: float = 1.0) -> ULDLoss:
    """TRL's loss with positional alignment (one position to one), or with `merged` its aligned groups of
    byte offsets merged by the chain rule; no EOS skipped, distillation alone."""
    config: Any = SimpleNamespace(
        uld_crossentropy_weight=0.0,
        uld_distillation_weight=1.0,
        uld_student_temperature=temperature,
        uld_teacher_temperature=temperature,
        uld_skip_student_eos=False,
        uld_skip_teacher_eos=False,
        use_extended_uld=merged,
        uld_token_merge_strategy="bayesian" if merged else "observed",
        uld_use_hybrid_loss=hybrid,
        uld_hybrid_matched_weight=None,
        uld_hybrid_unmatched_weight=None,
        beta=beta,
    )
    return ULDLoss(config)


def with_matches(loss: ULDLoss, pairs: dict[int, int]) -> ULDLoss:
    """GOLD's vocabulary map (teacher id -> student id) set directly, as `_initialize_vocabulary_mapping`
    sets it from two tokenizers' equal strings."""
    loss._vocab_mapping = pairs
    loss._teacher_matched_ids = set(pairs)
    loss._student_matched_ids = set(pairs.values())
    loss.mapping_tensor = torch.full((max(pairs) + 1,), -1, dtype=torch.long)
    for teacher, student in pairs.items():
        loss.mapping_tensor[teacher] = student
    return loss


def random(seed: int, *shape: int) -> torch.Tensor:
    return 3.0 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_sorted_l1_compares_probabilities_by_rank_padding_the_shorter_vocabulary() -> None:
    student = torch.tensor([[0.1, 0.6, 0.3]], dtype=torch.float64)
    teacher = torch.tensor([[0.5, 0.2, 0.2, 0.1]], dtype=torch.float64)
    # Sorted: (0.6, 0.3, 0.1, 0) against (0.5, 0.2, 0.2, 0.1).
    torch.testing.assert_close(sorted_l1(student, teacher), torch.tensor([0.1 + 0.1 + 0.1 + 0.1]).double())
    # A permutation of either vocabulary changes nothing: no correspondence between entries is assumed.
    torch.testing.assert_close(sorted_l1(student[:, [2, 0, 1]], teacher), sorted_l1(student, teacher))


@pytest.mark.parametrize(("student_vocab", "teacher_vocab"), [(30, 30), (30, 45), (45, 30)])
def test_uld_is_golds_plain_uld(student_vocab: int, teacher_vocab: int) -> None:
    rows = 7
    student_logits, teacher_logits = random(0, 1, rows, student_vocab), random(1, 1, rows, teacher_vocab)
    ids = torch.zeros(1, rows, dtype=torch.long)
    # Every position is an answer position; GOLD averages over them, the registered divergence gives each.
    theirs = gold()._compute_distillation_loss(student_logits, teacher_logits, ids, ids, ids, ids)
    ours = universal_logit_distillation(student_logits[0], teacher_logits[0], KDConfig())
    assert ours.shape == (rows,)
    torch.testing.assert_close(ours.mean(), theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize(("student_vocab", "teacher_vocab"), [(30, 45), (45, 30)])
def test_hybrid_uld_is_golds_hybrid(beta: float, student_vocab: int, teacher_vocab: int) -> None:
    rows = 5
    student = F.softmax(random(2, rows, student_vocab), dim=-1)
    teacher = F.softmax(random(3, rows, teacher_vocab), dim=-1)
    # GOLD's matched pieces anywhere in both vocabularies; ours the first columns, in pairs.
    pairs = {4: 9, 0: 2, 17: 11, 29: 0, 8: 25, 21: 6}
    theirs = with_matches(gold(beta, hybrid=True), pairs)._compute_hybrid_uld_loss(student, teacher)

    def matched_first(probs: torch.Tensor, matched: list[int]) -> torch.Tensor:
        rest = [v for v in range(probs.shape[-1]) if v not in matched]
        return probs[:, matched + rest]

    ours = hybrid_uld(
        matched_first(student, list(pairs.values())), matched_first(teacher, list(pairs)), len(pairs), beta
    )
    assert ours.shape == (rows,)
    torch.testing.assert_close(ours.mean(), theirs, rtol=0, atol=1e-12)


def test_hybrid_without_matches_is_plain_uld() -> None:
    student, teacher = F.softmax(random(4, 3, 20), -1), F.softmax(random(5, 3, 26), -1)
    torch.testing.assert_close(hybrid_uld(student, teacher, 0, 0.5), sorted_l1(student, teacher))


def test_the_chunked_sum_has_the_value_and_gradients_of_full_logits() -> None:
    rows, matched = 11, 6
    student_hidden, student_head = random(6, rows, 8).requires_grad_(), random(7, 30, 8).requires_grad_()
    teacher_hidden, teacher_head = random(8, rows, 12), random(9, 45, 12)
    config = KDConfig(temperature=1.7, jsd_beta=0.4, chunk_size=4)
    chunked = hybrid_uld_sum(student_hidden, student_head, teacher_hidden, teacher_head, matched, config)
    grads = torch.autograd.grad(chunked, [student_hidden, student_head])
    full = hybrid_uld(
        F.softmax(student_hidden @ student_head.T / 1.7, -1),
        F.softmax(teacher_hidden @ teacher_head.T / 1.7, -1),
        matched,
        0.4,
    ).sum()
    expected = torch.autograd.grad(full, [student_hidden, student_head])
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-12)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert grads[1].abs().sum() > 0


def spans(*ends: int) -> list[Span]:
    """Contiguous spans from 0 ending at `ends`."""
    return list(zip((0, *ends[:-1]), ends, strict=True))


# Student and teacher tokenizations of one 24-character answer: a pair of single tokens (0-3), two student
# tokens for one teacher token (3-8, 8-12), one for two (12-16), and three for four (16-24).
STUDENT = spans(3, 5, 8, 9, 12, 16, 19, 21, 24)
TEACHER = spans(3, 8, 12, 14, 16, 18, 20, 22, 24)


def test_aligned_groups_are_golds_groups_of_byte_offsets() -> None:
    ours = aligned_groups(STUDENT, TEACHER)
    assert ours == [([0], [0]), ([1, 2], [1]), ([3, 4], [2]), ([5], [3, 4]), ([6, 7, 8], [5, 6, 7, 8])]
    assert ours == list(zip(*ULDLoss._align_by_byte_offsets(STUDENT, TEACHER), strict=True))
    # The groups of one token on each side are the pairs of the same piece.
    assert [(s[0], t[0]) for s, t in ours if len(s) == len(t) == 1] == aligned_exactly(STUDENT, TEACHER)


def test_a_group_must_be_the_same_text_on_both_sides() -> None:
    # A character's further bytes (spans that cover nothing) go with the token before them.
    assert aligned_groups([(0, 2), (2, 2), (2, 4)], [(0, 2), (2, 4)]) == [([0, 1], [0]), ([2], [1])]
    # Text only the teacher has (4-6: the student's answer was cut there) and a gap (a turn's end, 6-9)
    # close no group, where GOLD's walk would pair the leftovers.
    assert aligned_groups([(0, 2), (2, 4)], [(0, 2), (2, 6)]) == [([0], [0])]
    assert aligned_groups([(0, 2), (2, 4), (9, 12)], [(0, 4), (9, 10), (10, 12)]) == [
        ([0, 1], [0]),
        ([2], [1, 2]),
    ]
    assert aligned_groups([(0, 4), (9, 12)], [(0, 2), (2, 6), (9, 12)]) == [([1], [2])]


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
def test_merged_groups_are_golds_chain_rule_merge_in_value_and_gradient(beta: float) -> None:
    """TRL's whole ULD step (`_compute_distillation_loss` with `use_extended_uld` and the "bayesian" merge:
    its own grouping, merge and hybrid, a mean over groups) on one sequence: a prompt token, then the
    answer, whose byte offsets are the spans above."""
    temperature, student_vocab, teacher_vocab = 1.3, 30, 45
    # Logits of a few units, so that the merged probabilities stay above GOLD's floor of 1e-8.
    student_hidden = (random(10, len(STUDENT), 8) / 10).requires_grad_()
    student_head = random(11, student_vocab, 8).requires_grad_()
    teacher_hidden, teacher_head = random(12, len(TEACHER), 12) / 10, random(13, teacher_vocab, 12)
    generator = torch.Generator().manual_seed(14)
    student_targets = torch.randint(student_vocab, (len(STUDENT),), generator=generator)
    teacher_targets = torch.randint(teacher_vocab, (len(TEACHER),), generator=generator)
    pairs = {4: 9, 0: 2, 17: 11, 29: 0, 8: 25, 21: 6, 40: 29}

    def sequence(
        hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, answer: list[Span]
    ) -> dict[str, torch.Tensor]:
        # Row k predicts token k + 1; the last row predicts past the answer and goes unused.
        logits = torch.cat([hidden, torch.zeros_like(hidden[:1])]) @ head.T
        ids = torch.cat([torch.zeros(1, dtype=torch.long), targets])
        labels = torch.cat([torch.tensor([-100]), targets])
        offsets = torch.tensor([(0, 0), *answer])
        return {"logits": logits[None], "labels": labels[None], "ids": ids[None], "offsets": offsets[None]}

    student = sequence(student_hidden, student_head, student_targets, STUDENT)
    teacher = sequence(teacher_hidden, teacher_head, teacher_targets, TEACHER)
    theirs = with_matches(gold(beta, hybrid=True, merged=True, temperature=temperature), pairs)
    mean = theirs._compute_distillation_loss(
        student["logits"],
        teacher["logits"],
        student["labels"],
        teacher["labels"],
        student["ids"],
        teacher["ids"],
        student_byte_offsets=student["offsets"],
        teacher_byte_offsets=teacher["offsets"],
    )
    expected = torch.autograd.grad(mean, [student_hidden, student_head])

    groups = aligned_groups(STUDENT, TEACHER)
    shared = (torch.tensor(list(pairs.values())), torch.tensor(list(pairs)))
    ours = grouped_hybrid_uld_sum(
        student_hidden,
        student_head,
        GroupRows.of([s for s, _ in groups], student_targets.tolist()),
        teacher_hidden,
        teacher_head,
        GroupRows.of([t for _, t in groups], teacher_targets.tolist()),
        shared,
        KDConfig(temperature=temperature, jsd_beta=beta, chunk_size=2),
    )
    grads = torch.autograd.grad(ours, [student_hidden, student_head])
    torch.testing.assert_close(ours / len(groups), mean, rtol=0, atol=1e-12)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got / len(groups), want, rtol=0, atol=1e-12)


def test_two_student_tokens_for_one_teacher_token_now_get_a_distillation_term() -> None:
    student_spans, teacher_spans = [(0, 2), (2, 5)], [(0, 5)]
    assert aligned_exactly(student_spans, teacher_spans) == []
    groups = aligned_groups(student_spans, teacher_spans)
    assert groups == [([0, 1], [0])]
    student_hidden = (random(15, 2, 8) / 10).requires_grad_()
    student_head, teacher_hidden, teacher_head = random(16, 30, 8), random(17, 1, 12) / 10, random(18, 45, 12)
    kd = grouped_hybrid_uld_sum(
        student_hidden,
        student_head,
        GroupRows.of([groups[0][0]], [7, 3]),
        teacher_hidden,
        teacher_head,
        GroupRows.of([groups[0][1]], [5]),
        (torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])),
        KDConfig(),
    )
    assert kd > 0
    (grad,) = torch.autograd.grad(kd, [student_hidden])
    # The first token through the probability of its target (the chain rule), the second through its
    # whole distribution.
    assert (grad.abs().sum(dim=-1) > 0).all()
