"""A frozen causal LM on transformers (CPU or one GPU) that takes new weights in place: what the transformers
teacher and rollout backends compute with. It keeps SGLang's contracts (no work while asleep, one
weight-update session per sync), so CPU runs prove the order the GPU path needs."""

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from kubedistill.api.spec import Attention
from kubedistill.runtime.engines.weight_sync import (
    TensorMeta,
    WeightSyncGroup,
    open_weight_sync_group,
    receive_tensors,
)
from kubedistill.runtime.models.loading import copy_named_tensors, load_causal_lm


@dataclass(frozen=True)
class WeightUpdateCounts:
    """What an engine did to take new weights: `sessions` opened (SGLang wakes the weights for each) and
    `loads` of tensors (one per bucket)."""

    sessions: int = 0
    loads: int = 0


class TransformersEngine:
    """A frozen causal LM on one device (CPU or one GPU)."""

    def __init__(
        self,
        model_path: str,
        dtype: torch.dtype,
        device: torch.device,
        attention: Attention = Attention.SDPA,
    ) -> None:
        self._device = device
        self._model = load_causal_lm(model_path, dtype, attention).to(device).eval()
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
