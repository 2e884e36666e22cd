"""The Ray actor around one rollout engine."""

import torch

from kubedistill.api.job import DistillationJob
from kubedistill.runtime.rollout.backend import SamplingConfig
from kubedistill.runtime.rollout.factory import build_rollout


class RolloutActor:
    def __init__(self, job: DistillationJob) -> None:
        if not torch.cuda.is_available():
            torch.set_num_threads(1)
        self.backend = build_rollout(job)

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[int]]:
        return self.backend.generate(prompts, sampling)

    def update_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        self.backend.update_weights(named_tensors)

    def named_parameters(self) -> dict[str, torch.Tensor]:
        """The engine's current weights (transformers only), to check a weight sync."""
        return self.backend.named_parameters()

    def sleep(self) -> None:
        self.backend.sleep()

    def wake(self) -> None:
        self.backend.wake()

    def close(self) -> None:
        self.backend.close()
