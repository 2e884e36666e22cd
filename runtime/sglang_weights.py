"""Moving the student's weights into SGLang engines (on-policy rollout, self-distillation teacher).

Both paths end in SGLang's `model.load_weights` by Hugging Face parameter name, inside a weight-update
session (`begin_weight_update` ... `end_weight_update`; SGLang 0.5.23 rejects updates outside one), and
neither works on an engine with `dp_size > 1`.

1. Tensors in the engine's actor (colocated, or whenever the tensors can be sent to the actor): the backend's
   `update_weights(named_tensors)` hands them to `Engine.update_weights_from_tensor` in buckets of about
   `bucket_bytes`, without flushing the cache in between, and flushes once at the end. SGLang passes them to
   its scheduler processes through CUDA IPC (or shared memory for CPU tensors): node-local, no copy.

2. Engines on other GPUs: an NCCL group of the trainer (rank 0) and every rank of every rollout engine, set up
   once and then used for each update. The student actor group drives both sides; each side's call blocks
   until the other side arrives, so the engine side goes out first as Ray refs:

       layout = weight_sync_layout([tp of each engine], trainer_host, free_port)
       refs = [actor.init_weight_sync_group.remote(g) for actor, g in zip(rollout_actors, layout.engines)]
       group = join_weight_sync_group(layout.trainer)   # sglang_engine, on the trainer rank
       ray.get(refs)

       metas = tensor_metas(named_tensors)                        # at every update, same order as sent
       refs = [actor.receive_weights.remote(metas) for actor in rollout_actors]
       broadcast_tensors((tensor for _, tensor in named_tensors), group)   # CUDA tensors, full (not sharded)
       ray.get(refs)
"""

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch

DEFAULT_BUCKET_BYTES = 1 << 30
WEIGHT_SYNC_GROUP = "kubedistill_weight_sync"

Item = TypeVar("Item")


@dataclass(frozen=True)
class TensorMeta:
    """What an engine must allocate to receive one broadcast tensor."""

    name: str
    dtype: str
    """The `torch` attribute name ("bfloat16"): SGLang allocates `getattr(torch, dtype)`."""
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * getattr(torch, self.dtype).itemsize


@dataclass(frozen=True)
class WeightSyncGroup:
    """One member's view of the NCCL group between the trainer and the rollout engines."""

    master_address: str
    master_port: int
    rank_offset: int
    """The trainer's rank (0), or the rank of an engine's first tensor-parallel rank."""
    world_size: int
    group_name: str = WEIGHT_SYNC_GROUP


@dataclass(frozen=True)
class WeightSyncLayout:
    trainer: WeightSyncGroup
    engines: tuple[WeightSyncGroup, ...]


def weight_sync_layout(
    engine_tensor_parallel: list[int], master_address: str, master_port: int
) -> WeightSyncLayout:
    """Ranks of the group: the trainer is 0, engine i's ranks follow those of engines 0..i-1."""
    world_size = 1 + sum(engine_tensor_parallel)
    offsets = [1 + sum(engine_tensor_parallel[:i]) for i in range(len(engine_tensor_parallel))]
    return WeightSyncLayout(
        trainer=WeightSyncGroup(master_address, master_port, 0, world_size),
        engines=tuple(WeightSyncGroup(master_address, master_port, offset, world_size) for offset in offsets),
    )


def tensor_metas(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[TensorMeta]:
    return [
        TensorMeta(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))
        for name, tensor in named_tensors
    ]


def tensor_nbytes(named_tensor: tuple[str, torch.Tensor]) -> int:
    return named_tensor[1].numel() * named_tensor[1].element_size()


def buckets(items: Iterable[Item], size: Callable[[Item], int], bucket_bytes: int) -> Iterator[list[Item]]:
    """Consecutive items in order, grouped so that a bucket exceeds `bucket_bytes` only if one item does."""
    bucket: list[Item] = []
    filled = 0
    for item in items:
        item_bytes = size(item)
        if bucket and filled + item_bytes > bucket_bytes:
            yield bucket
            bucket, filled = [], 0
        bucket.append(item)
        filled += item_bytes
    if bucket:
        yield bucket


def tcp_init_method(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"tcp://{host}:{port}"


def broadcast_tensors(tensors: Iterable[torch.Tensor], group: torch.distributed.ProcessGroup) -> None:
    """Send each tensor from the trainer (rank 0) to every engine rank, in `tensor_metas` order."""
    for tensor in tensors:
        torch.distributed.broadcast(tensor.contiguous(), src=0, group=group)
