"""Dual-space knowledge distillation (DSKD: Zhang et al., EMNLP 2024, "Dual-Space Knowledge Distillation for
Large Language Models"; exact token alignment from its follow-up, DSKDv2).

Vanilla KD compares distributions that two different heads produce from two different hidden spaces. DSKD
projects each model's hidden states into the other's space and compares distributions of one head at a
time, which also works when the vocabularies differ.

Notation: h_s [n, d_s] the student's hidden states at its loss positions and y their targets; h_t [m, d_t]
the teacher's at its own; W_s the student's head (trained), W_t the teacher's (frozen); P_ts [d_s x d_t] and
P_st [d_t x d_s] learned projectors without bias; sg() stops the gradient; D the configured divergence
(spec.distillation.loss, D(student logits, teacher logits), both divided by the temperature).

Student space (the teacher's knowledge through the student's head), eq. 4-6 of the paper:

    z_ts_i   = sg(W_s) P_ts h_t[a(i)]
    L_ts_ce  = sum_i CE(z_ts_i, y_i)            trains the projector alone: the head is detached
    L_ts_kd  = sum_i D(z_s_i, sg(z_ts_i))       trains the student alone

Teacher space (the student's states through the teacher's head), eq. 7-8:

    z_st_j   = W_t P_st h_s[b(j)]
    L_st_kd  = sum_j D(z_st_j, z_t_j)           trains the projector and the student, through h_s

    loss = ((1 - kd_ratio) * sum_i CE(z_s_i, y_i) + kd_ratio * (L_ts_ce + L_ts_kd + L_st_kd)) / normalizer

The configured divergence serves both spaces (the paper's code fixes forward KL in the teacher's; KDFlow
uses the configured one, as here). Which teacher state a student position gets, a(i), and back, b(j):

- One tokenizer on both sides: every position with itself (DSKD as first published), whatever
  spec.distillation.dskdTokenAlign says.
- `eta` (exact token alignment, DSKDv2): only targets with identical spans in the response text, i.e. the
  same piece of text predicted from the same prefix (`data.alignment.aligned_exactly`); the sums run over
  those pairs.
- `cma` (cross-model attention, section 3.3): each student position attends over the teacher positions of
  its own sample,

      q_i = P_q [E_s(x_i); E_s(y_i)]            x the input token at the position, y its target
      k_j = [E_t(x_j); E_t(y_j)] / std
      v_j = P_ts (h_t_j / std + E_t(y_j) / std)
      S   = q k^T / sqrt(2 d_t)
      P_ts h_t[a(i)]  :=  sum_j softmax_j(S)_ij v_j
      P_st h_s[b(j)]  :=  sum_i softmax_i(S)_ij P_st h_s_i

  so P_q learns from both spaces. E are output-head rows used as token embeddings, detached (the student
  ranks hold the teacher's head, not its embeddings, as in KDFlow); std is over the whole tensor. L_ts_kd
  is kept to positions whose z_ts predicts the target, as the authors' implementation does: early on, the
  attention's mixture is noise a student should not imitate.

spec.distillation.dskdProjectorInit pseudoInverse (KDFlow, DSKDv2) replaces the plain initialisation with
one where both heads give the same logits over R, the first spec.distillation.topkVocab tokens both
vocabularies share (all of them when unset), W[R] a head's rows for them and ^+ the pseudo-inverse:

    P_ts := W_s[R]^+ W_t[R]                     at the start, then learned: W_s[R] P_ts h_t = W_t[R] h_t,
                                                exactly for k <= d_s, else as near as least squares gets
    P_st  = W_t[R]^+ sg(W_s[R])                 every step, from the student's current head; not learned

KDFlow (kdflow/algorithms/dskd.py @ 3a7a21a): init_t2s = (W_t[R]^T @ pinv(W_s[R]^T))^T (135-137), the
teacher part's pinv kept (140), s2t = W_s[R]^T @ pinv(W_t[R]^T) applied as h_s @ s2t (276-281, 353-356,
419-424); pinv(A^T) = pinv(A)^T makes these the two lines above. R there is the first k ids with one
vocabulary (114-116) and the first k of the overlap otherwise (130-132). Where we differ, on purpose:
- W_s in P_st is the student's head of this step, as in DSKDv2 (code/criterions/dual_space_kd_v2.py,
  `init_s2t_projector`); KDFlow takes a copy made at the start (31), so its P_st never moves.
- The overlap is `data.alignment.shared_vocabulary` (the same bytes), in the teacher's id order, so "the
  first k" are the lowest ids (BPE's earliest merges, its most frequent pieces). KDFlow's overlap is the
  student's `get_vocab()` order (121-123), a hash map's: which k it keeps is arbitrary.
- KDFlow's cma path takes the whole overlap's rows for s2t (354), not cut to k as its pinv's are (130-132,
  140): with k smaller than the overlap the product's shapes disagree. Here every path uses the same R.
Cost, once at the start on the teacher head's device, in float32 (float64 if the heads are): two SVDs of
[k x d] matrices, O(k d^2) (k = 150k, d = 4k: 2.4e12 multiply-adds each) with about three [k x d] copies
alive at a time, and the kept W_t[R]^+ ([d_t x k] float32: 2.4 GB at d_t = 4096, k = 150k) on every student
rank; each micro-batch adds the [d_t x k] @ [k x d_s] product (2.4e12 multiply-adds at that size; once a
micro-batch rather than through [n x k]: cheaper from about d_s d_t / (d_s + d_t) tokens on). topkVocab
bounds all of it.

Every term runs through the fused chunked loss, so no [tokens x vocab] logits exist in full.
"""

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kubedistill.api.spec import DskdProjectorInit, DskdTokenAlign
from kubedistill.runtime.algorithms.base import Algorithm, AlgorithmContext, LossInputs
from kubedistill.runtime.data.alignment import aligned_positions, same_vocabulary, shared_vocabulary
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.losses.chunking import chunk_rows
from kubedistill.runtime.losses.fused import fused_kd_loss
from kubedistill.runtime.losses.output import IGNORE_INDEX, LossOutput
from kubedistill.runtime.models.loading import load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _long(values: list[int]) -> Tensor:
    return torch.tensor(values, dtype=torch.long)


class DualSpaceKD(Algorithm):
    cross_tokenizer = True

    def __init__(self, context: AlgorithmContext) -> None:
        super().__init__(context)
        self.t2s: nn.Linear | None = None
        self.s2t: nn.Linear | None = None
        self.query: nn.Linear | None = None
        self.pseudo_inverse = context.distillation.dskd_projector_init == DskdProjectorInit.PSEUDO_INVERSE
        # pseudoInverse: R's rows of the student's head and W_t[R]^+, set by `initialise`. Buffers follow the
        # module to its device; not persistent, so checkpoints hold none (the teacher's head never changes).
        self.student_rows: Tensor | None
        self.teacher_pinv: Tensor | None
        self.register_buffer("student_rows", None, persistent=False)
        self.register_buffer("teacher_pinv", None, persistent=False)
        teacher_size, student_size = context.teacher_hidden_size, context.student_hidden_size
        if teacher_size is not None:
            self.t2s = nn.Linear(teacher_size, student_size, bias=False)
            if not self.pseudo_inverse:
                self.s2t = nn.Linear(student_size, teacher_size, bias=False)
            if context.distillation.dskd_token_align == DskdTokenAlign.CMA:
                self.query = nn.Linear(2 * student_size, 2 * teacher_size, bias=False)

    def initialise(self, student_head: Tensor, teacher_head: Tensor | None) -> None:
        if not self.pseudo_inverse or teacher_head is None or self.t2s is None:
            return
        context = self.context
        assert context.student_tokenizer is not None and context.teacher_tokenizer is not None
        student_rows, teacher_rows = fitted_rows(
            load_tokenizer(context.student_tokenizer),
            load_tokenizer(context.teacher_tokenizer),
            (int(student_head.shape[0]), int(teacher_head.shape[0])),
            context.distillation.topk_vocab,
        )
        device = teacher_head.device
        wide = torch.promote_types(teacher_head.dtype, torch.float32)
        t2s, teacher_pinv = pseudo_inverse_projectors(
            student_head.detach().index_select(0, student_rows.to(student_head.device)).to(device, wide),
            teacher_head.detach().to(wide).index_select(0, teacher_rows.to(device)),
        )
        with torch.no_grad():
            self.t2s.weight.copy_(t2s)
        self.student_rows = student_rows.to(device)
        self.teacher_pinv = teacher_pinv

    @classmethod
    def micro_batch_extras(cls, samples: list[Sample]) -> dict[str, Tensor]:
        student, teacher = aligned_positions(samples, exactly=True)
        return {
            "student_aligned": _long(student),
            "teacher_aligned": _long(teacher),
            "student_inputs": _long([s.input_ids[p] for s in samples for p in s.loss_positions()]),
            "teacher_inputs": _long(
                [s.teacher_sequence[p] for s in samples for p in s.teacher_loss_positions()]
            ),
            "teacher_labels": _long([label for s in samples for label in s.teacher_labels()]),
            "student_counts": _long([s.num_targets for s in samples]),
            "teacher_counts": _long([len(s.teacher_loss_positions()) for s in samples]),
            "own_teacher_tokens": torch.tensor(any(s.target_spans is not None for s in samples)),
        }

    def forward(self, inputs: LossInputs) -> LossOutput:
        config = self.context.config
        ce = fused_kd_loss(
            inputs.student_hidden, inputs.student_head, None, None, inputs.labels, config, inputs.normalizer
        )
        # Every projector takes part in every backward, even on a rank with nothing aligned or only a
        # placeholder micro-batch: FSDP2 reduce-scatters the same gradients on every rank.
        through_every_projector = sum((p.sum() for p in self.parameters()), ce.loss.new_zeros(())) * 0.0
        if inputs.teacher_hidden is None or inputs.teacher_head is None or config.kd_ratio == 0.0:
            return replace(ce, loss=ce.loss + through_every_projector)
        if self.query is not None and bool(inputs.extras["own_teacher_tokens"]):
            kd_loss, kd_sum = self._cross_model_attention(inputs)
        else:
            kd_loss, kd_sum = self._exact(inputs)
        return LossOutput(
            loss=(1.0 - config.kd_ratio) * ce.loss + config.kd_ratio * kd_loss + through_every_projector,
            kd_sum=kd_sum,
            ce_sum=ce.ce_sum,
            num_tokens=ce.num_tokens,
        )

    def _exact(self, inputs: LossInputs) -> tuple[Tensor, Tensor]:
        student = inputs.extras["student_aligned"]
        teacher = inputs.extras["teacher_aligned"]
        kept = inputs.labels.index_select(0, student) != IGNORE_INDEX
        student, teacher = student[kept], teacher[kept]
        dtype = self.t2s.weight.dtype
        teacher_in_student = self.t2s(inputs.teacher_hidden.index_select(0, teacher).to(dtype))
        student_in_teacher = self._in_teacher_space(
            inputs.student_hidden.index_select(0, student).to(dtype), inputs.student_head
        )
        everywhere = torch.arange(student.numel(), device=student.device)
        return self._dual_space(inputs, student, teacher_in_student, everywhere, teacher, student_in_teacher)

    def _cross_model_attention(self, inputs: LossInputs) -> tuple[Tensor, Tensor]:
        extras = inputs.extras
        dtype = self.query.weight.dtype
        # Softmax over attention scores in at least float32, whatever the projectors' (mixed) precision.
        wide = torch.promote_types(dtype, torch.float32)
        student_head = inputs.student_head.detach().to(wide)
        teacher_head = inputs.teacher_head.to(wide)
        # A masked position's label is IGNORE_INDEX; any row serves as its embedding, its loss is dropped.
        targets = inputs.labels.clamp_min(0)
        queries = self.query(
            torch.cat([student_head[extras["student_inputs"]], student_head[targets]], -1).to(dtype)
        )
        keys = _standardised(
            torch.cat([teacher_head[extras["teacher_inputs"]], teacher_head[extras["teacher_labels"]]], -1)
        )
        values = self.t2s(
            (
                _standardised(inputs.teacher_hidden.to(wide))
                + _standardised(teacher_head[extras["teacher_labels"]])
            ).to(dtype)
        )
        student_values = self._in_teacher_space(inputs.student_hidden.to(dtype), inputs.student_head)
        scale = 1.0 / math.sqrt(keys.shape[-1])
        student_counts = extras["student_counts"].tolist()
        teacher_counts = extras["teacher_counts"].tolist()
        teacher_in_student, student_in_teacher = [], []
        for query, key, value, student_value in zip(
            queries.to(wide).split(student_counts),
            keys.split(teacher_counts),
            values.to(wide).split(teacher_counts),
            student_values.to(wide).split(student_counts),
            strict=True,
        ):
            scores = query @ key.T * scale
            teacher_in_student.append(scores.softmax(-1) @ value)
            student_in_teacher.append(scores.T.softmax(-1) @ student_value)
        student = torch.arange(inputs.labels.numel(), device=inputs.labels.device)
        teacher = torch.arange(inputs.teacher_hidden.shape[0], device=inputs.labels.device)
        projected = torch.cat(teacher_in_student)
        predicted = _predictions(
            projected.to(inputs.student_head.dtype),
            inputs.student_head.detach(),
            self.context.config.chunk_size,
        )
        agreeing = (predicted == inputs.labels).nonzero().squeeze(-1)
        return self._dual_space(inputs, student, projected, agreeing, teacher, torch.cat(student_in_teacher))

    def _in_teacher_space(self, student_hidden: Tensor, student_head: Tensor) -> Tensor:
        """P_st h_s: learned, or W_t[R]^+ sg(W_s[R]) h_s with the head of this step (pseudoInverse)."""
        if self.s2t is not None:
            return self.s2t(student_hidden)
        assert self.teacher_pinv is not None and self.student_rows is not None, "initialise() was not called"
        rows = student_head.detach().index_select(0, self.student_rows).to(self.teacher_pinv.dtype)
        return F.linear(student_hidden.to(self.teacher_pinv.dtype), self.teacher_pinv @ rows)

    def _dual_space(
        self,
        inputs: LossInputs,
        student: Tensor,
        teacher_in_student: Tensor,
        imitated: Tensor,
        teacher: Tensor,
        student_in_teacher: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """(L_ts_ce + L_ts_kd + L_st_kd) / normalizer and its detached sum.

        `teacher_in_student[k]` is the projected teacher state for student position `student[k]`, and
        `student_in_teacher[k]` the projected student state for teacher position `teacher[k]`; L_ts_kd runs
        over the `imitated` indices of `student`.
        """
        config, normalizer = self.context.config, inputs.normalizer
        divergence_only = replace(config, kd_ratio=1.0)
        student_head, teacher_head = inputs.student_head, inputs.teacher_head
        labels = inputs.labels.index_select(0, student)
        teacher_in_student = teacher_in_student.to(student_head.dtype)
        projector_ce = fused_kd_loss(
            teacher_in_student, student_head.detach(), None, None, labels, config, normalizer
        )
        student_kd = fused_kd_loss(
            inputs.student_hidden.index_select(0, student.index_select(0, imitated)),
            student_head,
            teacher_in_student.detach().index_select(0, imitated),
            student_head.detach(),
            labels.index_select(0, imitated),
            divergence_only,
            normalizer,
        )
        teacher_kd = fused_kd_loss(
            student_in_teacher.to(teacher_head.dtype),
            teacher_head,
            inputs.teacher_hidden.index_select(0, teacher),
            teacher_head,
            inputs.extras["teacher_labels"].index_select(0, teacher),
            divergence_only,
            normalizer,
        )
        loss = projector_ce.loss + student_kd.loss + teacher_kd.loss
        return loss, projector_ce.ce_sum + student_kd.kd_sum + teacher_kd.kd_sum


def _standardised(values: Tensor) -> Tensor:
    return values / values.std().clamp_min(1e-6)


@torch.no_grad()
def _predictions(hidden: Tensor, head: Tensor, chunk_size: int | None) -> Tensor:
    """Most likely token per row, a chunk of rows at a time (never [rows x vocab] logits in full)."""
    chunk = chunk_rows(chunk_size, hidden.shape[0], hidden.shape[1], head.shape[0])
    found = [
        F.linear(hidden[start : start + chunk], head).argmax(-1) for start in range(0, hidden.shape[0], chunk)
    ]
    return torch.cat(found) if found else hidden.new_zeros(0, dtype=torch.long)


def fitted_rows(
    student: "PreTrainedTokenizerBase",
    teacher: "PreTrainedTokenizerBase",
    head_rows: tuple[int, int],
    topk: int | None,
) -> tuple[Tensor, Tensor]:
    """R, as rows of the student's head and of the teacher's: with one vocabulary its first ids (KDFlow,
    dskd.py:114-116), else the shared pieces in the teacher's id order; the first `topk` of them (all when
    None). A head may have more rows than its tokenizer has tokens (padding): only rows of both heads count.
    """
    if same_vocabulary(student, teacher):
        student_ids = teacher_ids = list(range(min(head_rows)))
    else:
        shared = shared_vocabulary(student, teacher)
        inside = [
            (s, t)
            for s, t in zip(shared.student_ids, shared.teacher_ids, strict=True)
            if s < head_rows[0] and t < head_rows[1]
        ]
        student_ids, teacher_ids = [s for s, _ in inside], [t for _, t in inside]
    return _long(student_ids[:topk]), _long(teacher_ids[:topk])


def pseudo_inverse_projectors(student_rows: Tensor, teacher_rows: Tensor) -> tuple[Tensor, Tensor]:
    """(W_s[R]^+ W_t[R], W_t[R]^+) from the heads' rows for R ([k x d_s], [k x d_t]): the teacher-to-student
    projector's weight [d_s x d_t] under which both heads give the same logits over R, as well as a least-
    squares fit can, and what the student-to-teacher one is built from each step ([d_t x k])."""
    return torch.linalg.pinv(student_rows) @ teacher_rows, torch.linalg.pinv(teacher_rows)
