"""What every rollout engine provides: sampled responses to prompts, and in-place weight updates."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from kubedistill.runtime.data.images import ImageInputs
from kubedistill.runtime.engines.weight_sync import TensorMeta, WeightSyncGroup


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int
    temperature: float
    top_p: float
    samples_per_prompt: int
    seed: int


class RolloutBackend(Protocol):
    """One generation engine. Implementations: transformers (CPU/GPU) and SGLang (GPU)."""

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        images: list[ImageInputs | None] | None = None,
    ) -> list[list[int]]:
        """Response token ids, `samples_per_prompt` per prompt, prompt-major, without the prompt; a
        response ends with the end-of-sequence token unless it was cut at `max_new_tokens`. `images`: a
        vision-language model's image inputs, one per prompt (None: a prompt without images)."""
        ...

    def begin_weight_update(self) -> None:
        """Open the one weight-update session of a sync; weights wake for it if asleep."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights in place, by Hugging Face parameter name, inside a session; one bucket a call."""
        ...

    def end_weight_update(self) -> None:
        """Close the session (and put woken weights back to sleep)."""
        ...

    def init_weight_sync_group(self, group: WeightSyncGroup) -> None:
        """Join the trainer's broadcast group; blocks until every member has joined."""
        ...

    def receive_weights(self, metas: list[TensorMeta]) -> None:
        """Load the weights the trainer broadcasts over that group, in `metas` order."""
        ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...
