"""The Ray actor around one rollout engine."""

from kubedistill.api.job import DistillationJob
from kubedistill.runtime.engines import EngineActor
from kubedistill.runtime.rollout.backend import SamplingConfig
from kubedistill.runtime.rollout.factory import build_rollout


class RolloutActor(EngineActor):
    def __init__(self, job: DistillationJob) -> None:
        super().__init__()
        self.backend = build_rollout(job)

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[int]]:
        return self.backend.generate(prompts, sampling)
