"""Data parallelism of the student with FSDP2, applied in one place and one order: every decoder block, then
the root (which then owns the embeddings, the final norm, the output head and the algorithm's weights)."""

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard


def process_group_backend(device_type: str) -> str:
    """The default process group's backend: gloo for CPU tensors on every device, NCCL for CUDA ones.

    The student's step all-reduces CPU tensors (the loss sums, `all_ranks_agree`), and under cpuOffload
    FSDP2's gradient clipping and `full_tensor()` run collectives on CPU shards: NCCL alone has no CPU
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


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks, whatever the architecture calls their container."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name in ("layers", "h", "blocks"):
        blocks = getattr(decoder, name, None)
        if isinstance(blocks, nn.ModuleList):
            return list(blocks)
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}")


def apply_fsdp(
    root: nn.Module,
    student: nn.Module,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype,
    cpu_offload: bool,
) -> None:
    mixed_precision = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy() if cpu_offload else None
    options = {"mesh": mesh, "mp_policy": mixed_precision}
    if offload is not None:
        options["offload_policy"] = offload
    # On a mesh of one rank a shard is the whole parameter: freeing the unsharded copy after each block's
    # forward only to all-gather it again for the backward saves no memory and costs two copies.
    reshard = mesh.size() > 1
    for block in decoder_blocks(student):
        fully_shard(block, reshard_after_forward=reshard, **options)
    # The root's parameters are needed again right after its forward (the loss and its backward follow at
    # once), so they stay unsharded between forward and backward.
    fully_shard(root, reshard_after_forward=False, **options)
