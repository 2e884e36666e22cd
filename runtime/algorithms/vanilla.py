"""Vanilla KD (and SFT): the fused chunked loss on the teacher's exact logits, rebuilt from hidden states."""

from kubedistill.runtime.algorithms.base import Algorithm, LossInputs
from kubedistill.runtime.losses.fused import fused_kd_loss
from kubedistill.runtime.losses.output import LossOutput


class VanillaKD(Algorithm):
    def forward(self, inputs: LossInputs) -> LossOutput:
        return fused_kd_loss(
            inputs.student_hidden,
            inputs.student_head,
            inputs.teacher_hidden,
            inputs.teacher_head,
            inputs.labels,
            self.context.config,
            inputs.normalizer,
        )
