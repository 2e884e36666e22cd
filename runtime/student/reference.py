"""The frozen reference of DPO and GRPO: the student as it started, kept on every rank, sharded like it.

Only what trains can differ from the start, so only the trainable parameters are kept: the whole model's
shard in full fine-tuning (one more copy of each rank's fp32 shard: 4 bytes a parameter over the ranks), the
adapters alone with LoRA (the frozen base is the reference as it is). The reference scores a micro-batch by
the student's own forward with the kept values copied into the parameters' shards, and the trained values
copied back after (`swapped`), so no second model is built, sharded or placed; it costs a forward pass
without gradients per micro-batch, where TRL runs a second model (`ref_model`) or precomputes.

The kept values are saved in the student's checkpoints (a resumed run has the start of the run it resumes,
not of its own restart) and taken again from `checkpoint.resumeFrom`'s weights (a job started from another
one's student refers to that student).
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule


class ReferenceWeights:
    def __init__(self, student: nn.Module, keeps: bool) -> None:
        self._student = student
        self.tensors: dict[str, torch.Tensor] = (
            {name: p.detach().clone() for name, p in student.named_parameters() if p.requires_grad}
            if keeps
            else {}
        )
        """By the student's parameter names, the trainable ones; what checkpoints save under `reference`."""

    @property
    def kept(self) -> bool:
        return bool(self.tensors)

    @torch.no_grad()
    def take_student(self) -> None:
        """The reference becomes the student's current weights (a start from another job's student)."""
        for name, parameter in self._student.named_parameters():
            if name in self.tensors:
                self.tensors[name].copy_(parameter.detach())

    @contextmanager
    def swapped(self, root: nn.Module) -> Iterator[None]:
        """The student's parameters hold the reference's values inside; every FSDP2 module of `root` is
        resharded on the way in and out, so no gathered weights outlive the values they were gathered from."""
        _reshard(root)
        with torch.no_grad():
            trained = {name: p.detach().clone() for name, p in self._parameters() if name in self.tensors}
            for name, parameter in self._parameters():
                if name in self.tensors:
                    parameter.detach().copy_(self.tensors[name])
        try:
            yield
        finally:
            _reshard(root)
            with torch.no_grad():
                for name, parameter in self._parameters():
                    if name in trained:
                        parameter.detach().copy_(trained[name])

    def _parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return iter(self._student.named_parameters())


def _reshard(root: nn.Module) -> None:
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
