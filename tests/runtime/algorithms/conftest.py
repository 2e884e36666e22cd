"""Two tokenizers trained on the same text with different vocabulary sizes (so they split it differently),
saved where an `AlgorithmContext` can point, and micro-batches of real samples built through both."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kubedistill.api.spec import DataSource, DataSpec, DistillationSpec, Mode
from kubedistill.runtime.algorithms.base import AlgorithmContext, LossInputs
from kubedistill.runtime.data.load import load_samples
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.demo.data import chat_records
from kubedistill.runtime.demo.tiny import build_tokenizer
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.student.batch import MicroBatch
from tests.runtime.conftest import TinyWorld

TEACHER_VOCABULARY = 400
"""The tiny world's tokenizer has 320 tokens; the teacher's, trained on the same text, merges more."""
STUDENT_WIDTH = 8
TEACHER_WIDTH = 12


def demo_texts() -> list[str]:
    """The text the tiny world's tokenizer is trained on (`tests/runtime/conftest.py`)."""
    records = chat_records(96, seed=0) + chat_records(24, seed=1)
    return [" ".join(m["content"] for m in record["messages"]) for record in records]


@dataclass(frozen=True)
class Tokenizers:
    student: object
    teacher: object
    student_path: Path
    teacher_path: Path

    def swapped(self) -> "Tokenizers":
        """The finer tokenizer on the teacher's side: then teacher positions can lack a partner too."""
        return Tokenizers(self.teacher, self.student, self.teacher_path, self.student_path)


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> Tokenizers:
    root = tmp_path_factory.mktemp("tokenizers")
    student = build_tokenizer(demo_texts(), vocab_size=320)
    teacher = build_tokenizer(demo_texts(), vocab_size=TEACHER_VOCABULARY)
    student.save_pretrained(root / "student")
    teacher.save_pretrained(root / "teacher")
    return Tokenizers(student, teacher, root / "student", root / "teacher")


def samples(
    tiny: TinyWorld, student, teacher, *, cross_tokenizer: bool = True, count: int = 6, **data: object
) -> list[Sample]:
    source = DataSource(path=str(tiny.train))
    spec = DataSpec(train=source, **({"max_length": 64, "prompt_max_length": 32} | data))
    loaded = load_samples(
        source,
        spec,
        student,
        mode=Mode.OFF_POLICY,
        teacher_tokenizer=teacher,
        cross_tokenizer=cross_tokenizer,
    )
    return loaded.samples[:count]


def context(
    tokenizers: Tokenizers, config: KDConfig, *, same: bool = False, **distillation: object
) -> AlgorithmContext:
    return AlgorithmContext(
        config=config,
        student_hidden_size=STUDENT_WIDTH,
        teacher_hidden_size=TEACHER_WIDTH,
        student_tokenizer=str(tokenizers.student_path),
        teacher_tokenizer=str(tokenizers.student_path if same else tokenizers.teacher_path),
        distillation=DistillationSpec(**distillation),
    )


@dataclass(frozen=True)
class Batch:
    """A micro-batch of real samples with random float64 hidden states and heads for both models."""

    samples: list[Sample]
    micro_batch: MicroBatch
    student_hidden: torch.Tensor
    student_head: torch.Tensor
    teacher_hidden: torch.Tensor
    teacher_head: torch.Tensor

    @property
    def normalizer(self) -> float:
        # More than this micro-batch's targets, as for one micro-batch of a bigger global batch.
        return float(self.micro_batch.num_targets + 5)

    def inputs(self, extras: dict[str, torch.Tensor]) -> LossInputs:
        """Loss inputs over fresh leaves (the student's hidden states and head get gradients)."""
        return LossInputs(
            student_hidden=self.student_hidden.detach().clone().requires_grad_(),
            student_head=self.student_head.detach().clone().requires_grad_(),
            teacher_hidden=self.teacher_hidden,
            teacher_head=self.teacher_head,
            labels=self.micro_batch.labels,
            normalizer=self.normalizer,
            extras=extras,
        )


def random_batch(
    samples: list[Sample], student_vocabulary: int, teacher_vocabulary: int, seed: int = 0
) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    micro_batch = MicroBatch.from_samples(samples, pad_id=0)
    teacher_positions = sum(len(s.teacher_loss_positions()) for s in samples)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return Batch(
        samples=samples,
        micro_batch=micro_batch,
        student_hidden=normal(micro_batch.num_targets, STUDENT_WIDTH),
        student_head=normal(student_vocabulary, STUDENT_WIDTH),
        teacher_hidden=normal(teacher_positions, TEACHER_WIDTH),
        teacher_head=normal(teacher_vocabulary, TEACHER_WIDTH),
    )
