"""The distillation loss over full logits, written plainly: the definition the fused loss is tested against.

    loss = ((1 - kd_ratio) * sum_tokens CE + kd_ratio * sum_tokens KD) / normalizer

CE is on the raw student logits over the student's whole vocabulary. KD compares logits / temperature over
the first min(V_student, V_teacher) columns: vocabularies are padded to a multiple of some size, and the rows
past the smaller one are not tokens of both models (KDFlow truncates the same way). There is no T^2 factor
(TRL and KDFlow use none). The normalizer is the number of unmasked tokens of the whole global batch, so
summing the losses of micro-batches and ranks gives the gradient of the global batch.
"""

import torch.nn.functional as F
from torch import Tensor

from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.losses.output import IGNORE_INDEX, LossOutput
from kubedistill.runtime.losses.registry import get_loss


def reference_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    config: KDConfig,
    normalizer: float,
) -> LossOutput:
    """student_logits [N, Vs], teacher_logits [N, Vt] or None, labels [N]. Without a teacher (or with
    kd_ratio 0) the loss is the cross-entropy alone, at full weight (SFT)."""
    kept = labels != IGNORE_INDEX
    ce_sum = F.cross_entropy(student_logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    per_position = None
    if teacher_logits is None or config.kd_ratio == 0.0:
        kd_sum = ce_sum.new_zeros(())
        kd_ratio = 0.0
    else:
        kd_ratio = config.kd_ratio
        vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
        student = student_logits[kept, :vocab] / config.temperature
        teacher = teacher_logits[kept, :vocab].to(student.dtype) / config.temperature
        kd = get_loss(config.loss)(student, teacher, config)
        kd_sum = kd.sum()
        per_position = kd.new_zeros(labels.shape[0]).masked_scatter_(kept, kd.detach())
    loss = ((1.0 - kd_ratio) * ce_sum + kd_ratio * kd_sum) / normalizer
    return LossOutput(
        loss=loss,
        kd_sum=kd_sum.detach(),
        ce_sum=ce_sum.detach(),
        num_tokens=int(kept.sum().item()),
        kd_per_position=per_position,
    )
