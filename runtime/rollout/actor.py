"""The Ray actor around one rollout engine."""

from kubedistill.runtime.engines import EngineActor
from kubedistill.runtime.rollout.backend import RolloutBackend, SamplingConfig
from kubedistill.runtime.rollout.factory import build_rollout
from kubedistill.runtime.sglang_args import EnginePlacement


class RolloutActor(EngineActor):
    def build(self, placement: EnginePlacement) -> RolloutBackend:
        return build_rollout(self.job, placement)

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[int]]:
        return self.backend.generate(prompts, sampling)
