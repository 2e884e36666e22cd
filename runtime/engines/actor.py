"""The Ray actor around one teacher or rollout engine, whatever it computes: it lands, starts its backend
where the group placed it, and forwards weight updates and sleep/wake to it."""

from typing import Any

import ray
import torch

from kubedistill.api.job import DistillationJob
from kubedistill.runtime.cluster.actors import free_port
from kubedistill.runtime.data.images import ImageInputs
from kubedistill.runtime.engines.layout import EnginePlacement, Landing
from kubedistill.runtime.engines.transformers.model import WeightUpdateCounts
from kubedistill.runtime.engines.weight_sync import TensorMeta, WeightSyncGroup
from kubedistill.runtime.rollout.backend import SamplingConfig


class EngineActor:
    """The Ray actor around one engine; subclasses `build` the role's backend and add the role's calls.

    Two steps, because where an engine runs depends on where its actor landed (which GPUs of a node are
    free for it, which node hosts its multi-node rendezvous): the group creates the actors, asks each to
    `land`, works out the placements (`kubedistill.runtime.engines.layout`), then `start`s them all.
    """

    def __init__(self, job: DistillationJob) -> None:
        if not torch.cuda.is_available():
            # Actors share the machine's cores: one thread each keeps them from oversubscribing it.
            torch.set_num_threads(1)
        self.job = job
        self._backend: Any = None

    def land(self) -> Landing:
        return Landing(ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), free_port())

    def start(self, placement: EnginePlacement) -> None:
        self._backend = self.build(placement)

    def build(self, placement: EnginePlacement) -> Any:
        raise NotImplementedError

    @property
    def backend(self) -> Any:
        if self._backend is None:
            raise RuntimeError(f"{type(self).__name__}.start was not called")
        return self._backend

    def begin_weight_update(self) -> None:
        self.backend.begin_weight_update()

    def update_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        self.backend.update_weights(named_tensors)

    def end_weight_update(self) -> None:
        self.backend.end_weight_update()

    def weight_update_counts(self) -> WeightUpdateCounts:
        """How many weight-update sessions and loads the engine had (transformers only), to check a sync."""
        return self.backend.weight_update_counts()

    def init_weight_sync_group(self, group: WeightSyncGroup) -> None:
        self.backend.init_weight_sync_group(group)

    def receive_weights(self, metas: list[TensorMeta]) -> None:
        self.backend.receive_weights(metas)

    def named_parameters(self) -> dict[str, torch.Tensor]:
        """The engine's current weights (transformers only), to check a weight sync."""
        return self.backend.named_parameters()

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        images: list[ImageInputs | None] | None = None,
    ) -> list[list[int]]:
        """Responses sampled by an engine that generates: a rollout engine, or a teacher writing a step's
        responses (sequence-level KD)."""
        return self.backend.generate(prompts, sampling, images)

    def sleep(self) -> None:
        self.backend.sleep()

    def wake(self) -> None:
        self.backend.wake()

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
