"""Gradient clipping over this rank's part of each gradient, whose squared norm rides along with the step's
loss sums in the step's one all-reduce.

`torch.nn.utils.clip_grad_norm_` over FSDP2's DTensor gradients reduces the norm in a collective of its own,
one more point a step where every rank waits for the slowest, and dispatches each norm through DTensor. Here
each rank sums the squares of the elements it holds, divided by how many ranks hold a copy of them (HSDP
replicates every shard over the replicate dimension; a plain tensor is on every rank), so that the sum over
all ranks is the whole gradient's squared norm, whatever the mesh.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.tensor import DTensor


@dataclass(frozen=True)
class LocalGradients:
    """This rank's part of every gradient, grouped by how many ranks hold a copy of each element."""

    by_copies: dict[int, list[torch.Tensor]]

    @classmethod
    def of(cls, parameters: Iterable[nn.Parameter], world_size: int) -> "LocalGradients":
        groups: dict[int, list[torch.Tensor]] = {}
        for parameter in parameters:
            grad = parameter.grad
            if grad is None:
                continue
            if isinstance(grad, DTensor):
                local, copies = grad.to_local(), _copies(grad, world_size)
            else:
                local, copies = grad, world_size
            groups.setdefault(copies, []).append(local)
        return cls(groups)

    def square_sum(self) -> torch.Tensor:
        """This rank's share of the gradients' squared L2 norm, a float64 CPU scalar (for gloo)."""
        total = torch.zeros((), dtype=torch.float64)
        for copies, tensors in self.by_copies.items():
            norm = torch.nn.utils.get_total_norm(tensors, norm_type=2.0)
            total += norm.to("cpu", torch.float64).square() / copies
        return total

    @torch.no_grad()
    def clip_(self, total_norm: float, max_norm: float) -> None:
        """Scale the gradients to `max_norm` when their norm exceeds it, as `clip_grad_norm_` does (the same
        coefficient: max_norm / (norm + 1e-6)); a non-finite norm leaves them as they are (the step is
        skipped)."""
        coefficient = max_norm / (total_norm + 1e-6)
        if not math.isfinite(total_norm) or coefficient >= 1.0:
            return
        for tensors in self.by_copies.values():
            torch._foreach_mul_(tensors, coefficient)


def _copies(grad: DTensor, world_size: int) -> int:
    """How many ranks hold each element of this rank's part: the sizes of the mesh's replicated dimensions."""
    mesh = grad.device_mesh
    assert mesh.size() == world_size, "the student's mesh spans every rank"
    copies = 1
    for dimension, placement in enumerate(grad.placements):
        assert not placement.is_partial(), "gradients are reduced before clipping"
        if placement.is_replicate():
            copies *= mesh.size(dimension)
    return copies
