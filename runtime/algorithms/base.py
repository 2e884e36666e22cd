"""What an algorithm is: the loss of one micro-batch, given the student's and the teacher's hidden states.

An algorithm is an `nn.Module` so that one with weights of its own (DSKD's projectors) is sharded, trained
and checkpointed with the student; it runs inside the FSDP2 root module's forward, where the student's
output head is unsharded.
"""

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from kubedistill.api.registry import ALGORITHM_GROUP
from kubedistill.api.spec import (
    DistillationJobSpec,
    DistillationSpec,
    Mode,
    PreferenceSpec,
    ReinforcementSpec,
)
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.losses.output import LossOutput
from kubedistill.runtime.losses.registry import Registry

if TYPE_CHECKING:
    from kubedistill.runtime.data.sample import Sample


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
    extras: Mapping[str, Tensor] = field(default_factory=dict)
    """What `Algorithm.micro_batch_extras` built for this micro-batch on the driver (e.g. alignments)."""
    sample_index: Tensor | None = None
    """[n] the sample (0, 1, ... in the micro-batch's order) each loss position belongs to
    (`MicroBatch.sample_index`): what a loss over whole sequences (DPO's, GRPO's) sums positions by."""


@dataclass(frozen=True)
class AlgorithmContext:
    config: KDConfig
    student_hidden_size: int
    teacher_hidden_size: int | None
    student_tokenizer: str | None = None
    """Path of the student's tokenizer."""
    teacher_tokenizer: str | None = None
    """Path of the teacher's tokenizer (None without a teacher)."""
    teacher_model: str | None = None
    """Path of the teacher model, for algorithms that read more of it than the output head."""
    distillation: DistillationSpec = field(default_factory=DistillationSpec)
    """The job's spec.distillation, for settings of an algorithm's own (e.g. dskdTokenAlign)."""
    preference: PreferenceSpec = field(default_factory=PreferenceSpec)
    """The job's spec.preference (DPO's beta), its defaults where the manifest leaves it out."""
    reinforcement: ReinforcementSpec = field(default_factory=ReinforcementSpec)
    """The job's spec.reinforcement (GRPO's klCoef), its defaults where the manifest leaves it out."""


class Algorithm(nn.Module):
    """The loss of one micro-batch. Weights of its own (`nn.Parameter`s) are trained with the student, at
    spec.distillation.projectorLearningRate."""

    cross_tokenizer: ClassVar[bool] = False
    """The algorithm matches the tokens of a teacher with its own tokenizer: the trainer then has every sample
    carry the teacher's tokenization of the same conversation (`Sample.aligned_targets`)."""

    sparse_targets: ClassVar[bool] = False
    """The algorithm trains on a hosted teacher's stored top-k log-probabilities: every sample carries its
    record's `teacherLogprobs` (`Sample.teacher_top_ids`)."""

    needs_reference: ClassVar[bool] = False
    """The loss compares the student with its frozen initial self (DPO, GRPO): each rank keeps the initial
    values of its trainable parameters and, before a step's forward passes, scores every micro-batch under
    them; `LossInputs.extras["reference_logprobs"]` is then the reference's log-probability of each label."""

    figure_names: ClassVar[tuple[str, ...]] = ()
    """Names of the scalar sums every `LossOutput.figures` holds (snake_case, as metrics.jsonl's keys): the
    worker adds them up over micro-batches and ranks, and `summarize` turns them into the step's figures."""

    def __init__(self, context: AlgorithmContext) -> None:
        super().__init__()
        self.context = context

    def initialise(self, student_head: Tensor, teacher_head: Tensor | None) -> None:
        """Called once, before FSDP2 shards the module, with both output heads in full ([vocab, hidden]; the
        student's on the CPU, the teacher's on the device), for weights that start from them (DSKD's
        pseudo-inverse projectors)."""
        del student_head, teacher_head

    @classmethod
    def micro_batch_extras(cls, samples: "list[Sample]") -> dict[str, Tensor]:
        """Per-micro-batch tensors the loss needs beyond tokens and labels, built on the driver from the
        samples in micro-batch order; they reach `forward` as `LossInputs.extras`."""
        del samples
        return {}

    @classmethod
    def normalizer(cls, samples: "list[Sample]") -> int:
        """What every rank's loss of a step is divided by, from the step's samples: their targets (a mean over
        the global batch's tokens), unless the loss is a mean over something else (DPO's pairs)."""
        return sum(sample.num_targets for sample in samples)

    @classmethod
    def summarize(cls, sums: Mapping[str, float]) -> dict[str, float]:
        """The step's figures (metrics.jsonl, /metrics' records, the trackers) from the sums of
        `figure_names` over the whole step; one named `loss` stands for the record's loss."""
        del sums
        return {}

    def forward(self, inputs: LossInputs) -> LossOutput:
        raise NotImplementedError


ALGORITHMS: Registry[type[Algorithm]] = Registry(ALGORITHM_GROUP, "algorithm")
register_algorithm = ALGORITHMS.register

MODE_ALGORITHMS = {
    Mode.PREFERENCE: ("kubedistill.runtime.algorithms.dpo", "DPO"),
    Mode.REINFORCEMENT: ("kubedistill.runtime.algorithms.grpo", "GRPO"),
}
"""The modes whose loss is their own, not a choice of spec.distillation.algorithm (a rule leaves that at its
default for them); imported when asked, as the registry loads its entries."""


def algorithm_for(spec: DistillationJobSpec) -> type[Algorithm]:
    """The algorithm a job trains with: its mode's own (preference: DPO, reinforcement: GRPO), else the
    registered spec.distillation.algorithm."""
    if spec.mode in MODE_ALGORITHMS:
        module, name = MODE_ALGORITHMS[spec.mode]
        algorithm: type[Algorithm] = getattr(importlib.import_module(module), name)
        return algorithm
    return ALGORITHMS.get(spec.distillation.algorithm)
