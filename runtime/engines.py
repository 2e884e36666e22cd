"""What teacher and rollout engines have in common, whatever they compute: a frozen transformers model that
takes new weights in place, and a Ray actor that forwards to its backend."""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import ray
import torch

from kubedistill.api.job import DistillationJob
from kubedistill.runtime.actors import free_port
from kubedistill.runtime.engine_layout import Landing
from kubedistill.runtime.models import copy_named_tensors, load_causal_lm
from kubedistill.runtime.sglang_args import EnginePlacement
from kubedistill.runtime.weight_sync import (
    TensorMeta,
    WeightSyncGroup,
    open_weight_sync_group,
    receive_tensors,
)


@dataclass(frozen=True)
class WeightUpdateCounts:
    """What an engine did to take new weights: `sessions` opened (SGLang wakes the weights for each) and
    `loads` of tensors (one per bucket)."""

    sessions: int = 0
    loads: int = 0


class TransformersEngine:
    """A frozen causal LM on one device (CPU or one GPU)."""

    def __init__(self, model_path: str, dtype: torch.dtype, device: torch.device) -> None:
        self._device = device
        self._model = load_causal_lm(model_path, dtype).to(device).eval()
        self._model.requires_grad_(False)
        self._asleep = False
        self._updating = False
        self._counts = WeightUpdateCounts()
        self._sync_group: torch.distributed.ProcessGroup | None = None

    def _check_awake(self) -> None:
        # An SGLang engine that released its memory cannot serve; this one keeps the same contract, so
        # colocated runs on a laptop prove their sleep/wake order too.
        if self._asleep:
            raise RuntimeError("the engine is asleep (colocation): wake() it before asking it to compute")

    def begin_weight_update(self) -> None:
        """Open a weight-update session. SGLang 0.5.23 loads tensors only inside one and wakes released
        weights for it; this engine keeps the same contract, so CPU runs prove one session per sync."""
        if self._updating:
            raise RuntimeError("a weight update is already in progress")
        self._updating = True
        self._counts = WeightUpdateCounts(self._counts.sessions + 1, self._counts.loads)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if not self._updating:
            raise RuntimeError("update_weights outside a weight-update session: begin_weight_update() first")
        copy_named_tensors(self._model, named_tensors)
        self._counts = WeightUpdateCounts(self._counts.sessions, self._counts.loads + 1)

    def end_weight_update(self) -> None:
        self._updating = False

    def weight_update_counts(self) -> WeightUpdateCounts:
        return self._counts

    def init_weight_sync_group(self, group: WeightSyncGroup) -> None:
        """Join the trainer's broadcast group (replacing an earlier one); returns once every member has."""
        self._sync_group = open_weight_sync_group(group, self._device)

    def receive_weights(self, metas: list[TensorMeta]) -> None:
        """Receive the tensors the trainer broadcasts, in `metas` order, and load them."""
        if self._sync_group is None:
            raise RuntimeError("receive_weights needs init_weight_sync_group first")
        self.begin_weight_update()
        self.update_weights(receive_tensors(metas, self._sync_group, self._device))
        self.end_weight_update()

    def named_parameters(self) -> dict[str, torch.Tensor]:
        """The engine's current weights, to check a weight sync."""
        return {name: value.detach().to("cpu").clone() for name, value in self._model.named_parameters()}

    def sleep(self) -> None:
        """Nothing to release (transformers keeps no KV cache between calls), but no work until `wake`."""
        self._asleep = True

    def wake(self) -> None:
        self._asleep = False

    def close(self) -> None:
        del self._model


class EngineActor:
    """The Ray actor around one engine; subclasses `build` the role's backend and add the role's calls.

    Two steps, because where an engine runs depends on where its actor landed (which GPUs of a node are
    free for it, which node hosts its multi-node rendezvous): the group creates the actors, asks each to
    `land`, works out the placements (`kubedistill.runtime.engine_layout`), then `start`s them all.
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

    def sleep(self) -> None:
        self.backend.sleep()

    def wake(self) -> None:
        self.backend.wake()

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
