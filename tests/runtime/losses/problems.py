"""Small random distillation problems, and the reference loss called with the fused loss's arguments."""

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from kubedistill.runtime.losses import IGNORE_INDEX, KDConfig, LossOutput, fused_kd_loss, reference_kd_loss

LOSSES = ["fkl", "rkl", "jsd", "tvd", "skl", "srkl", "akl", "top1Ce", "hrl", "uld"]
DIVERGENCES = [loss for loss in LOSSES if loss != "top1Ce"]
"""The losses that vanish when the student is the teacher: top1Ce is a cross-entropy, -p_t log p_t there."""

KDLoss = Callable[[Tensor, Tensor, Tensor | None, Tensor | None, Tensor, KDConfig, float], LossOutput]


def reference_from_hidden(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor | None,
    teacher_weight: Tensor | None,
    labels: Tensor,
    config: KDConfig,
    normalizer: float,
) -> LossOutput:
    teacher_logits = (
        None if teacher_hidden is None or teacher_weight is None else teacher_hidden @ teacher_weight.T
    )
    return reference_kd_loss(student_hidden @ student_weight.T, teacher_logits, labels, config, normalizer)


IMPLEMENTATIONS: dict[str, KDLoss] = {"reference": reference_from_hidden, "fused": fused_kd_loss}


@dataclass(frozen=True)
class Problem:
    """Student and teacher heads of different widths and vocabularies, some positions ignored."""

    student_hidden: Tensor
    student_weight: Tensor
    teacher_hidden: Tensor | None
    teacher_weight: Tensor | None
    labels: Tensor

    @property
    def normalizer(self) -> float:
        # Larger than this batch's own count, as for one micro-batch of a global batch.
        return float((self.labels != IGNORE_INDEX).sum().item()) + 7.0

    def fresh(self) -> "Problem":
        """The same values as new leaves, so each loss call gets its own gradients."""
        return replace(
            self,
            student_hidden=self.student_hidden.detach().clone().requires_grad_(),
            student_weight=self.student_weight.detach().clone().requires_grad_(),
        )

    def run(self, loss: KDLoss, config: KDConfig) -> tuple[LossOutput, Tensor, Tensor]:
        """The loss output and its gradients with respect to the student's hidden states and weight."""
        leaves = self.fresh()
        out = loss(
            leaves.student_hidden,
            leaves.student_weight,
            leaves.teacher_hidden,
            leaves.teacher_weight,
            leaves.labels,
            config,
            self.normalizer,
        )
        grad_hidden, grad_weight = torch.autograd.grad(
            out.loss, [leaves.student_hidden, leaves.student_weight]
        )
        return out, grad_hidden, grad_weight


def make_problem(
    tokens: int = 37,
    student_vocab: int = 50,
    teacher_vocab: int = 45,
    student_dim: int = 16,
    teacher_dim: int = 12,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> Problem:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype)

    labels = torch.randint(0, student_vocab, (tokens,), generator=generator)
    labels[::4] = IGNORE_INDEX
    return Problem(
        student_hidden=randn(tokens, student_dim),
        student_weight=randn(student_vocab, student_dim) / student_dim**0.5,
        teacher_hidden=randn(tokens, teacher_dim),
        teacher_weight=randn(teacher_vocab, teacher_dim) * 2.0 / teacher_dim**0.5,
        labels=labels,
    )
