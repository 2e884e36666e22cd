"""Data parallelism of the student with FSDP2, applied in one place and one order: every decoder block, then
the root (which then owns the embeddings, the final norm, the output head and the algorithm's weights)."""

import os

import torch
from torch import nn
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

from kubedistill.api.spec import Reshard

UNSHARDED_SHARE = 8
"""`reshardAfterForward: auto` keeps the student unsharded when it and its gradients take at most 1/8 of a
device's memory: a 1.5B student in bf16 (6 GB) on an 80 GB H100, not a 4B one (16 GB)."""


def process_group_backend(device_type: str) -> str:
    """The default process group's backend: gloo for CPU tensors on every device, NCCL for CUDA ones.

    The student's step all-reduces CPU tensors (the loss sums with the gradient norm, `all_ranks_agree`),
    and under cpuOffload FSDP2's `full_tensor()` runs collectives on CPU shards: NCCL alone has no CPU
    backend ("No backend type associated with device type cpu"), so a CUDA group maps CPU to gloo.
    """
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "cpu:gloo"


def device_mesh(device_type: str, world_size: int, shard_size: int) -> DeviceMesh:
    """1-D mesh (FSDP) when sharding over all ranks, 2-D (replicate, shard) for HSDP."""
    if shard_size in (-1, world_size):
        return init_device_mesh(device_type, (world_size,), mesh_dim_names=("shard",))
    return init_device_mesh(
        device_type, (world_size // shard_size, shard_size), mesh_dim_names=("replicate", "shard")
    )


def context_mesh(device_type: str, world_size: int, context_parallel: int) -> tuple[DeviceMesh, ProcessGroup]:
    """Ranks as (data, context): each `context_parallel` consecutive ranks share a sequence. FSDP2 shards over
    every rank (the mesh flattened, as torchtitan's dp_shard_cp), since context ranks train the same weights
    on different tokens; the second is the group a rank's context-parallel attention gathers over."""
    if world_size % context_parallel:
        raise ValueError(f"{world_size} ranks cannot form context groups of {context_parallel}")
    mesh = init_device_mesh(
        device_type, (world_size // context_parallel, context_parallel), mesh_dim_names=("data", "context")
    )
    return mesh._flatten("shard"), mesh["context"].get_group()


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks, whatever the architecture calls their container."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name in ("layers", "h", "blocks"):
        blocks = getattr(decoder, name, None)
        if isinstance(blocks, nn.ModuleList):
            return list(blocks)
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}")


def device_memory_bytes(device: torch.device, ranks_here: int) -> int:
    """The memory one rank may count on: its GPU's, or on CPU its share of the host's."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(ranks_here, 1)


def keeps_unsharded(
    policy: Reshard, world_size: int, unsharded_bytes: int, device_memory: int, cpu_offload: bool
) -> bool:
    """Whether the ranks keep the whole student and its gradients through a step (`Reshard` says when)."""
    if policy is not Reshard.AUTO:
        return policy is Reshard.NEVER
    if world_size == 1:
        # A one-rank shard is the whole parameter: resharding would free nothing and copy twice.
        return True
    # Offloading asks for the least device memory.
    return not cpu_offload and unsharded_bytes * UNSHARDED_SHARE <= device_memory


def apply_fsdp(
    root: nn.Module,
    student: nn.Module,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype,
    cpu_offload: bool,
    unsharded: bool,
) -> None:
    mixed_precision = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy() if cpu_offload else None
    options = {"mesh": mesh, "mp_policy": mixed_precision}
    if offload is not None:
        options["offload_policy"] = offload
    for block in decoder_blocks(student):
        fully_shard(block, reshard_after_forward=not unsharded, **options)
    # The root's parameters are needed again right after its forward (the loss and its backward follow at
    # once), so they stay unsharded between forward and backward.
    fully_shard(root, reshard_after_forward=False, **options)
