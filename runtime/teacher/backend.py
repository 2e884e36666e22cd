"""What every teacher engine provides: the teacher's final, post-norm hidden states at chosen positions.

Hidden states, not logits, cross process boundaries: a [tokens x hidden] tensor is hidden/vocab the size
of the logits (about 1/37 for Qwen3), and the student recomputes the exact teacher logits from it with the
teacher's lm_head.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from kubedistill.runtime.data.images import ImageInputs
from kubedistill.runtime.rollout.backend import SamplingConfig


@dataclass(frozen=True)
class TeacherBatch:
    """Sequences to run through the teacher and the positions whose hidden states are wanted.

    Position t's hidden state predicts token t + 1, so the loss positions of a sequence are the positions
    *before* its target tokens. Token ids go in (never text), so trainer and teacher tokenise identically.
    """

    sequences: list[list[int]]
    positions: list[list[int]]
    images: list[ImageInputs | None] = field(default_factory=list)
    """A vision-language teacher's image inputs, one per sequence (None: a sequence without images), for
    the image tokens in it; empty when no sequence has images."""

    def __post_init__(self) -> None:
        if len(self.sequences) != len(self.positions):
            raise ValueError(f"{len(self.sequences)} sequences but {len(self.positions)} position lists")
        if self.images and len(self.images) != len(self.sequences):
            raise ValueError(f"{len(self.sequences)} sequences but {len(self.images)} image inputs")

    @property
    def num_positions(self) -> int:
        return sum(len(p) for p in self.positions)

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


class TeacherBackend(Protocol):
    """One teacher engine (one replica). Implementations: transformers (CPU/GPU) and SGLang (GPU)."""

    @property
    def hidden_size(self) -> int: ...

    def hidden_states(self, batch: TeacherBatch) -> torch.Tensor:
        """[batch.num_positions, hidden_size] on the CPU, sequences in order, positions in order."""
        ...

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        images: list[ImageInputs | None] | None = None,
    ) -> list[list[int]]:
        """Answers to prompts, sampled as a rollout engine samples them (`RolloutBackend.generate`): the
        responses of the steps sequence-level KD (spec.rollout.sequenceKd) trains on."""
        ...

    def begin_weight_update(self) -> None:
        """Open the one weight-update session of a sync (self-distillation); weights wake for it if asleep."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights in place, by Hugging Face parameter name, inside a session; one bucket a call."""
        ...

    def end_weight_update(self) -> None:
        """Close the session (and put woken weights back to sleep)."""
        ...

    def sleep(self) -> None:
        """Release accelerator memory (colocation); a no-op where there is nothing to release."""
        ...

    def wake(self) -> None:
        """Take the memory back after `sleep`."""
        ...

    def close(self) -> None: ...
