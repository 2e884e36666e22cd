"""Simple cross-tokenizer KD: distil where both tokenizations predict the same piece from the same text, over
the pieces both vocabularies share.

Student target i and teacher target j are aligned when their spans in the response text are the same
(`data.alignment.aligned_exactly`): both models predict the next piece from the same text, and that piece
is the same text on both sides. The pieces both tokenizers have (the same bytes, or both end-of-sequence
tokens; a fixed id mapping computed once from the two tokenizers) are outcomes of that one event. At aligned
positions

    KD_i = D(softmax(z_s[i, S] / T), softmax(z_t[j, T'] / T))

where S and T' are the student's and the teacher's ids of the shared pieces, so both distributions are
renormalised over them, and D is spec.distillation.loss. The loss is

    ((1 - kd_ratio) * sum_all CE + kd_ratio * sum_aligned KD) / normalizer

so positions without a partner get the cross-entropy only. With identical tokenizers every position is
aligned with itself and every piece is shared: exactly vanilla KD.

Why the same piece and not only the same start (which would pair more positions): a tokenizer always
splits a text the same way, so a teacher whose vocabulary has " purple" gives next to no probability to
" pur", and where the student's target is " pur" the teacher's distribution over the shared pieces says
nothing about it but pushes the student away from it. On the demo task (tokenizers of 400 and 512 pieces,
kdRatio 0.5) pairing by start alone ended at eval CE 0.441, pairing by piece at 0.396 (KDFlow's
simple_ctkd pairs the same way). Both parts run through the fused chunked
loss (`fused_kd_loss`), so neither model's [tokens x vocab] logits exist in full; the aligned positions'
student logits are computed twice (once per part), the price of reusing it unchanged.

With spec.distillation.loss `uld`, KD_i is GOLD's hybrid ULD instead (`losses.uld`): the shared pieces are
compared entry by entry, as above but without renormalising, and every other piece of both whole
vocabularies by sorted probabilities. It is also taken where the sides split a text differently, as GOLD
does: each run of tokens that is the same text as a run of the other side's (" purple" against " pur"
"ple") counts once, each side's run merged into one distribution by the chain rule
(`data.alignment.aligned_groups`, `losses.uld`). With the other losses such positions get the cross-entropy
only.
"""

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kubedistill.api.job import SpecError
from kubedistill.runtime.algorithms.base import Algorithm, AlgorithmContext, LossInputs
from kubedistill.runtime.data.alignment import (
    SharedVocabulary,
    aligned_positions,
    merged_groups,
    shared_vocabulary,
)
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.losses.fused import fused_kd_loss
from kubedistill.runtime.losses.output import IGNORE_INDEX, LossOutput
from kubedistill.runtime.losses.uld import ULD, GroupRows, grouped_hybrid_uld_sum
from kubedistill.runtime.models.loading import load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MIN_SHARED_FRACTION = 0.1
"""Fewest shared pieces, as a fraction of the smaller vocabulary. Tokenizers of one family share most of
theirs (Qwen3 and Llama 3 share more than half); below a tenth, the renormalised distributions describe
too little of what either model predicts to be worth distilling."""


class SimpleCrossTokenizerKD(Algorithm):
    cross_tokenizer = True

    def __init__(self, context: AlgorithmContext) -> None:
        super().__init__(context)
        student_ids: tuple[int, ...] = ()
        teacher_ids: tuple[int, ...] = ()
        if context.teacher_tokenizer is not None and context.student_tokenizer is not None:
            vocabulary = checked_shared_vocabulary(
                load_tokenizer(context.student_tokenizer), load_tokenizer(context.teacher_tokenizer)
            )
            student_ids, teacher_ids = vocabulary.student_ids, vocabulary.teacher_ids
        # Buffers, so they follow the module to its device; not persistent, so checkpoints hold none.
        self.register_buffer("student_pieces", torch.tensor(student_ids, dtype=torch.long), persistent=False)
        self.register_buffer("teacher_pieces", torch.tensor(teacher_ids, dtype=torch.long), persistent=False)

    @classmethod
    def micro_batch_extras(cls, samples: list[Sample]) -> dict[str, Tensor]:
        student, teacher = aligned_positions(samples, exactly=True)
        merged = merged_groups(samples)
        student_targets = [target for sample in samples for target in sample.labels()]
        teacher_targets = [target for sample in samples for target in sample.teacher_labels()]
        return (
            {
                "student_aligned": torch.tensor(student, dtype=torch.long),
                "teacher_aligned": torch.tensor(teacher, dtype=torch.long),
            }
            | _group_extras("student", GroupRows.of([group[0] for group in merged], student_targets))
            | _group_extras("teacher", GroupRows.of([group[1] for group in merged], teacher_targets))
        )

    def forward(self, inputs: LossInputs) -> LossOutput:
        config = self.context.config
        ce = fused_kd_loss(
            inputs.student_hidden, inputs.student_head, None, None, inputs.labels, config, inputs.normalizer
        )
        if inputs.teacher_hidden is None or inputs.teacher_head is None or config.kd_ratio == 0.0:
            return ce
        if config.loss == ULD:
            return self._hybrid_uld(inputs, ce, inputs.teacher_hidden, inputs.teacher_head)
        student_rows, teacher_rows = _labelled_pairs(inputs)
        kd = fused_kd_loss(
            inputs.student_hidden.index_select(0, student_rows),
            inputs.student_head.index_select(0, self.student_pieces),
            inputs.teacher_hidden.index_select(0, teacher_rows),
            inputs.teacher_head.index_select(0, self.teacher_pieces),
            # Any valid label: at kd_ratio 1 this call's cross-entropy is only reported, and dropped here.
            torch.zeros_like(student_rows),
            replace(config, kd_ratio=1.0),
            inputs.normalizer,
        )
        return LossOutput(
            loss=(1.0 - config.kd_ratio) * ce.loss + config.kd_ratio * kd.loss,
            kd_sum=kd.kd_sum,
            ce_sum=ce.ce_sum,
            num_tokens=ce.num_tokens,
        )

    def _hybrid_uld(
        self, inputs: LossInputs, ce: LossOutput, teacher_hidden: Tensor, teacher_head: Tensor
    ) -> LossOutput:
        """GOLD's hybrid ULD over both whole vocabularies (`losses.uld`) at every aligned group: the pairs
        of single tokens and the merged groups."""
        config = self.context.config
        extras = inputs.extras
        student = _group_rows(extras, "student").after_single_tokens(extras["student_aligned"])
        teacher = _group_rows(extras, "teacher").after_single_tokens(extras["teacher_aligned"])
        ignored = inputs.labels == IGNORE_INDEX
        ignored_earlier = torch.zeros_like(student.last).index_add(
            0, student.earlier_group, ignored.index_select(0, student.earlier).long()
        )
        kept = ~ignored.index_select(0, student.last) & (ignored_earlier == 0)
        kd_sum = grouped_hybrid_uld_sum(
            inputs.student_hidden,
            inputs.student_head,
            student.only(kept),
            teacher_hidden,
            teacher_head,
            teacher.only(kept),
            (self.student_pieces, self.teacher_pieces),
            config,
        )
        return LossOutput(
            loss=(1.0 - config.kd_ratio) * ce.loss + config.kd_ratio * kd_sum / inputs.normalizer,
            kd_sum=kd_sum.detach(),
            ce_sum=ce.ce_sum,
            num_tokens=ce.num_tokens,
        )


def _group_extras(side: str, rows: GroupRows) -> dict[str, Tensor]:
    return {
        f"{side}_merged": rows.last,
        f"{side}_merged_earlier": rows.earlier,
        f"{side}_merged_earlier_targets": rows.earlier_targets,
        f"{side}_merged_earlier_group": rows.earlier_group,
    }


def _group_rows(extras: Mapping[str, Tensor], side: str) -> GroupRows:
    return GroupRows(
        extras[f"{side}_merged"],
        extras[f"{side}_merged_earlier"],
        extras[f"{side}_merged_earlier_targets"],
        extras[f"{side}_merged_earlier_group"],
    )


def checked_shared_vocabulary(
    student: "PreTrainedTokenizerBase", teacher: "PreTrainedTokenizerBase"
) -> SharedVocabulary:
    """The shared pieces, refusing tokenizers that share too few to distil over."""
    vocabulary = shared_vocabulary(student, teacher)
    smaller = min(len(student), len(teacher))
    if len(vocabulary) < MIN_SHARED_FRACTION * smaller:
        raise SpecError(
            "spec.distillation.algorithm",
            "simpleCtkd distils over the vocabulary pieces both tokenizers "
            f"share, and these share {len(vocabulary)} of {smaller} (it needs at least "
            f"{MIN_SHARED_FRACTION:.0%} of the smaller vocabulary); use dskd, which needs no shared pieces",
        )
    return vocabulary


def _labelled_pairs(inputs: LossInputs) -> tuple[Tensor, Tensor]:
    student = inputs.extras["student_aligned"]
    teacher = inputs.extras["teacher_aligned"]
    kept = inputs.labels.index_select(0, student) != IGNORE_INDEX
    return student[kept], teacher[kept]
