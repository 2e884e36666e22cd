"""A plugin package as a user would write one: a loss and an algorithm, declared as entry points in its
metadata (`kubedistill_test_plugins-0.1.dist-info/entry_points.txt`), found by name in every process."""

import torch
from torch import Tensor

from kubedistill.runtime.algorithms.base import LossInputs
from kubedistill.runtime.algorithms.vanilla import VanillaKD
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.losses.output import LossOutput


def squared_probability_distance(student_logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    """0.5 * sum_v (p_v - q_v)^2 per token."""
    del config
    difference = torch.softmax(teacher_logits, dim=-1) - torch.softmax(student_logits, dim=-1)
    return 0.5 * difference.pow(2).sum(dim=-1)


class HalfVanillaKD(VanillaKD):
    """Vanilla KD at half weight: easy to recognise in a run's numbers."""

    def forward(self, inputs: LossInputs) -> LossOutput:
        output = super().forward(inputs)
        return LossOutput(output.loss * 0.5, output.kd_sum * 0.5, output.ce_sum * 0.5, output.num_tokens)


def always_nan(student_logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    """A broken loss: NaN everywhere, yet connected to the student's logits as a real loss would be."""
    del teacher_logits, config
    return student_logits.sum(dim=-1) * float("nan")
