"""Several teachers: the target every divergence compares the student with is the weighted mixture of the
teachers' next-token distributions, token by token.

With teachers t = 1..n of weights w_t (normalised to sum to 1) and logits z_t (each over the same
vocabulary, already divided by the temperature),

    m = sum_t w_t softmax(z_t),    handed on as its logits log m = logsumexp_t(log w_t + log_softmax(z_t))

and log m is handed to the divergence as the teacher's logits: softmax(log m) = m, so every divergence,
built-in or plugin, compares the student with the mixture unchanged. The mixture is formed in log space, one
teacher at a time, so a chunk holds two [chunk x vocab] blocks of the teachers at once however many there are.

EasyDistill's multi-teacher trainer (modelscope/easydistill, `easydistill/kd/multi_train.py`, as kept by its
forks webbigdata-jp/easydistill @ ab214f2 and eightHundreds/easydistill @ 75acb75: lines 79-99 and 126-137)
sums one loss per teacher instead, (1 - kd_ratio) CE + kd_ratio sum_t KL(p_t || q), with every teacher at
weight 1. For fkl the two agree where it matters:

    sum_t w_t KL(p_t || q) = KL(m || q) + sum_t w_t KL(p_t || m)

and the last term does not depend on the student, so the mixture's gradient is the weighted sum of the
per-teacher gradients (EasyDistill's is that sum at w_t = 1, n times the mixture's at equal weights). For the
other divergences (rkl, jsd, ...) only the mixture is a distribution the student can match; issue 29 asks for
"a weighted mixture of teachers' distributions", so that is the target here.

The teachers' hidden states reach the student ranks side by side, [tokens x (d_1 + ... + d_n)], and their
output heads likewise, [vocab x (d_1 + ... + d_n)]: teacher t's logits are its columns of both, so nothing is
padded and one buffer holds every head.
"""

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class TeacherMixture:
    hidden_sizes: tuple[int, ...]
    """Each teacher's width, in the order their hidden states and heads sit side by side."""
    weights: tuple[float, ...]
    """Each teacher's share of the mixture, summing to 1."""

    @classmethod
    def of(cls, hidden_sizes: Sequence[int], weights: Sequence[float]) -> "TeacherMixture":
        """The mixture of teachers of these widths, at these (not necessarily normalised) positive weights."""
        if len(hidden_sizes) != len(weights) or not weights or min(weights) <= 0.0:
            raise ValueError(f"one positive weight per teacher: {list(weights)} for {list(hidden_sizes)}")
        total = math.fsum(weights)
        return cls(tuple(int(size) for size in hidden_sizes), tuple(w / total for w in weights))

    def columns(self) -> list[slice]:
        """Each teacher's columns of the side-by-side hidden states and heads."""
        bounds = [0, *torch.tensor(self.hidden_sizes).cumsum(0).tolist()]
        return [slice(start, stop) for start, stop in itertools.pairwise(bounds)]


def mixed_log_probs(teacher_logits: Iterable[Tensor], weights: Sequence[float]) -> Tensor:
    """log sum_t w_t softmax(teacher_logits[t]), [N, V]: usable as the logits of the mixture. A generator
    of logits is read one teacher at a time."""
    mixed: Tensor | None = None
    for logits, weight in zip(teacher_logits, weights, strict=True):
        part = F.log_softmax(logits, dim=-1).add_(math.log(weight))
        mixed = part if mixed is None else torch.logaddexp(mixed, part, out=mixed)
    assert mixed is not None, "a mixture has at least one teacher"
    return mixed


def mixed_teacher_logits(
    hidden: Tensor, heads: Tensor, mixture: TeacherMixture, dtype: torch.dtype, temperature: float
) -> Tensor:
    """The mixture's logits (log m) at rows `hidden` [N, sum d] of the side-by-side heads [V, sum d], each
    teacher's logits computed in `dtype` and divided by `temperature` before its softmax."""

    def logits(columns: slice) -> Tensor:
        # A teacher's columns of the heads are a strided view that BLAS reads in place (its leading dimension
        # is sum d): no [vocab x d_t] copy per chunk (on CPU, 150k x 1024 of 2048 columns: the same time as a
        # contiguous head, where a copy alone takes twice as long).
        z = F.linear(hidden[:, columns], heads[:, columns]).to(dtype)
        return z.div_(temperature) if temperature != 1.0 else z

    return mixed_log_probs((logits(columns) for columns in mixture.columns()), mixture.weights)
