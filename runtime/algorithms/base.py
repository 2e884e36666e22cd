"""What an algorithm is: the loss of one micro-batch, given the student's and the teacher's hidden states.

An algorithm is an `nn.Module` so that one with weights of its own (DSKD's projectors) is sharded, trained
and checkpointed with the student; it runs inside the FSDP2 root module's forward, where the student's
output head is unsharded.
"""

from dataclasses import dataclass

from torch import Tensor, nn

from kubedistill.api.registry import ALGORITHM_GROUP
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.losses.output import LossOutput
from kubedistill.runtime.plugins import Registry


@dataclass(frozen=True)
class LossInputs:
    student_hidden: Tensor
    """[n, student hidden] final (post-norm) hidden states at the loss positions."""
    student_head: Tensor
    """[student vocab, student hidden] the student's output projection (trained)."""
    teacher_hidden: Tensor | None
    """[n, teacher hidden] the teacher's hidden states at its loss positions; None without a teacher."""
    teacher_head: Tensor | None
    """[teacher vocab, teacher hidden] the teacher's output projection (frozen)."""
    labels: Tensor
    """[n] the next token at each loss position."""
    normalizer: float
    """Target tokens of the whole global batch."""


@dataclass(frozen=True)
class AlgorithmContext:
    config: KDConfig
    student_hidden_size: int
    teacher_hidden_size: int | None


class Algorithm(nn.Module):
    def __init__(self, context: AlgorithmContext) -> None:
        super().__init__()
        self.context = context

    def forward(self, inputs: LossInputs) -> LossOutput:
        raise NotImplementedError


ALGORITHMS: Registry[type[Algorithm]] = Registry(ALGORITHM_GROUP, "algorithm")
register_algorithm = ALGORITHMS.register
