"""Moving the student's weights into engines that follow it (on-policy rollout, self-distillation teacher).

Weights are whole tensors by Hugging Face parameter name, gathered from the FSDP2 shards on student rank 0.
On SGLang both paths end in `model.load_weights`, inside a weight-update session (`begin_weight_update` ...
`end_weight_update`; SGLang 0.5.23 rejects updates outside one), and neither works with `dp_size > 1`.

1. Tensors through Ray (colocated engines, the self-distillation teacher): one weight-update session per
   sync (`begin_weight_update`, so an asleep SGLang engine wakes its weights once), in which the engine's
   `update_weights` gets buckets of about `bucket_bytes`, then `end_weight_update` (flush, sleep again).
   They are CPU tensors: SGLang's `Engine.update_weights_from_tensor` pickles them for its scheduler
   processes with torch's multiprocessing reductions (`MultiprocessingSerializer`, SGLang 0.5.23
   `srt/entrypoints/engine.py:1679-1694`, `srt/utils/common.py:3062-3074`), i.e. through shared memory,
   not CUDA IPC: node-local.

2. A broadcast group (rollout engines on GPUs of their own): a process group of the trainer (rank 0) and
   every rank of every rollout engine, set up once (again after a student restart, under a new name) and
   then used for each update; NCCL on GPUs, gloo on CPU (the transformers engines, so a laptop runs this
   path too). The student actor group drives both sides; each side's call blocks until the other side
   arrives, so the engine side goes out first as Ray refs:

       layout = weight_sync_layout([tp of each engine], trainer_host, free_port, name)
       refs = [actor.init_weight_sync_group.remote(g) for actor, g in zip(rollout_actors, layout.engines)]
       group = join_weight_sync_group(layout.trainer) or open_weight_sync_group(layout.trainer, device)
       ray.get(refs)

       metas = tensor_metas(named_tensors)                        # at every update, same order as sent
       refs = [actor.receive_weights.remote(metas) for actor in rollout_actors]
       broadcast_tensors((tensor for _, tensor in named_tensors), group)   # on the group's device
       ray.get(refs)
"""

import datetime
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch

DEFAULT_BUCKET_BYTES = 1 << 30
WEIGHT_SYNC_GROUP = "kubedistill_weight_sync"
SYNC_TIMEOUT = datetime.timedelta(minutes=10)

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
    engine_tensor_parallel: list[int],
    master_address: str,
    master_port: int,
    group_name: str = WEIGHT_SYNC_GROUP,
) -> WeightSyncLayout:
    """Ranks of the group: the trainer is 0, engine i's ranks follow those of engines 0..i-1."""
    world_size = 1 + sum(engine_tensor_parallel)
    offsets = [1 + sum(engine_tensor_parallel[:i]) for i in range(len(engine_tensor_parallel))]
    return WeightSyncLayout(
        trainer=WeightSyncGroup(master_address, master_port, 0, world_size, group_name),
        engines=tuple(
            WeightSyncGroup(master_address, master_port, offset, world_size, group_name) for offset in offsets
        ),
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


def process_group_backend(device: str) -> str:
    """The collective backend of a weight-sync group whose members hold their tensors on `device` ("cuda"
    or "cpu"): NCCL between GPUs, gloo between CPU processes (a cluster without GPUs, e.g. a local run)."""
    return "nccl" if device == "cuda" else "gloo"


def tcp_init_method(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"tcp://{host}:{port}"


def broadcast_tensors(tensors: Iterable[torch.Tensor], group: torch.distributed.ProcessGroup) -> None:
    """Send each tensor from the trainer (rank 0) to every engine rank, in `tensor_metas` order."""
    for tensor in tensors:
        # The group's own method, not torch.distributed.broadcast: a group opened by
        # `open_weight_sync_group` is unknown to torch.distributed's registry (it has no default group here).
        group.broadcast(tensor.contiguous(), 0).wait()


def open_weight_sync_group(
    group: WeightSyncGroup, device: torch.device, timeout: datetime.timedelta = SYNC_TIMEOUT
) -> torch.distributed.ProcessGroup:
    """This process's member of the weight-sync group, for engines that are not SGLang's (and the trainer
    next to them): gloo on CPU, NCCL on CUDA. It stays outside torch.distributed's default group, which the
    trainer rank already uses for FSDP2, and blocks until all `world_size` members have joined."""
    store = torch.distributed.TCPStore(
        group.master_address,
        group.master_port,
        group.world_size,
        is_master=group.rank_offset == 0,
        timeout=timeout,
    )
    prefixed = torch.distributed.PrefixStore(f"{group.group_name}/", store)
    if device.type == "cuda":
        return torch.distributed.ProcessGroupNCCL(prefixed, group.rank_offset, group.world_size)
    return torch.distributed.ProcessGroupGloo(prefixed, group.rank_offset, group.world_size, timeout)


def receive_tensors(
    metas: list[TensorMeta], group: torch.distributed.ProcessGroup, device: torch.device
) -> list[tuple[str, torch.Tensor]]:
    """The engine's side of `broadcast_tensors`: the tensors `metas` describe, in their order."""
    received = []
    for meta in metas:
        tensor = torch.empty(meta.shape, dtype=getattr(torch, meta.dtype), device=device)
        group.broadcast(tensor, 0).wait()
        received.append((meta.name, tensor))
    return received
