"""ULD and GOLD's hybrid, checked against TRL's own `ULDLoss` (trl.experimental.gold) on float64 tensors."""

from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from trl.experimental.gold.gold_trainer import ULDLoss

from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.losses.uld import hybrid_uld, hybrid_uld_sum, sorted_l1, universal_logit_distillation


def gold(beta: float = 0.5, hybrid: bool = False) -> ULDLoss:
    """TRL's loss with positional alignment (one position to one), no EOS skipped, distillation alone."""
    config: Any = SimpleNamespace(
        uld_crossentropy_weight=0.0,
        uld_distillation_weight=1.0,
        uld_student_temperature=1.0,
        uld_teacher_temperature=1.0,
        uld_skip_student_eos=False,
        uld_skip_teacher_eos=False,
        use_extended_uld=False,
        uld_token_merge_strategy="observed",
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
