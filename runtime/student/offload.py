"""What of a student rank leaves the GPU while a colocated engine has it (spec.cluster.colocate), and the
moving itself. Which parts leave is decided in one place, `trainer/colocation.py` (`student_offload`)."""

from enum import StrEnum

import torch
from torch.distributed.fsdp import FSDPModule

from kubedistill.runtime.student.optimizer import OptimizerPlace, StudentOptimizer


class StudentState(StrEnum):
    PARAMETERS = "parameters"
    """FSDP2's parameter shards, with the module's buffers (the teacher head among them)."""
    TEACHER_HEAD = "teacherHead"
    """The teacher's output head every rank holds whole (a buffer of the module)."""
    OPTIMIZER_STATE = "optimizerState"
    """AdamW's moments."""


def move_student(
    module: torch.nn.Module,
    optimizer: StudentOptimizer,
    device: torch.device,
    place: OptimizerPlace,
    parts: frozenset[StudentState],
) -> None:
    """`parts` to the CPU ("cpu") or back to the rank's `device` ("device")."""
    target = device if place == "device" else torch.device("cpu")
    if StudentState.PARAMETERS in parts:
        # A block FSDP2 keeps gathered (reshardAfterForward never, the root after its forward) holds plain
        # tensors that `.to()` cannot reset as shards: every block is resharded first, as verl does before
        # its FSDP2 offload (`verl/utils/fsdp_utils.py`, `offload_fsdp2_model_to_cpu`). FSDP2's `_apply`
        # swaps the tensors in place, so the optimizer's parameters stay the module's.
        for part in module.modules():
            if isinstance(part, FSDPModule):
                part.reshard()
        module.to(target)
    elif StudentState.TEACHER_HEAD in parts:
        head = getattr(module, "teacher_head", None)
        if isinstance(head, torch.Tensor):
            module.register_buffer("teacher_head", head.to(target), persistent=False)
    if StudentState.OPTIMIZER_STATE in parts:
        optimizer.move_state(place)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        if place == "cpu":
            torch.cuda.empty_cache()
