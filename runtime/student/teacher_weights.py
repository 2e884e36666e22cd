"""Self-distillation: the weights the teacher holds, kept on every rank, sharded like the student.

They are saved in the student's checkpoints, so a resumed run (or a restarted teacher) gets the teacher an
uninterrupted run has: the moving average (`teacherEmaDecay`; the engine itself never has to average), or the
student's weights at the last copy when copies are rarer than every step (`teacherUpdateFreq > 1`). A teacher
copied after every step is the student itself and needs no copy of its own: then nothing is kept.
"""

import torch
from torch import nn

from kubedistill.api.job import DistillationJob
from kubedistill.api.spec import Mode


class TeacherWeights:
    def __init__(self, job: DistillationJob, student: nn.Module) -> None:
        spec = job.spec
        self.ema_decay = spec.distillation.teacher_ema_decay
        keeps = spec.mode == Mode.SELF_DISTILLATION and (
            self.ema_decay is not None or spec.distillation.teacher_update_freq > 1
        )
        self._student = student
        self.tensors: dict[str, torch.Tensor] = (
            {name: p.detach().clone() for name, p in student.named_parameters()} if keeps else {}
        )
        """By the student's parameter names; what checkpoints save under `teacher`."""

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """An EMA teacher moves toward the student's new weights."""
        if self.ema_decay is None:
            return
        for name, parameter in self._student.named_parameters():
            self.tensors[name].lerp_(parameter.detach(), 1.0 - self.ema_decay)

    @torch.no_grad()
    def take_student(self) -> None:
        """At a copy: the teacher's weights become the student's current ones (an EMA teacher's are the
        average already)."""
        if self.ema_decay is not None:
            return
        for name, parameter in self._student.named_parameters():
            if name in self.tensors:
                self.tensors[name].copy_(parameter.detach())

    def of(self, name: str, parameter: torch.Tensor) -> torch.Tensor:
        """The teacher's copy of a parameter where it keeps one, else the student's own."""
        return self.tensors.get(name, parameter).detach()
