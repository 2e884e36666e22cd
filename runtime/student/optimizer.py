"""The student's optimizer and its learning-rate schedule, built in one place: AdamW over two parameter
groups (the model's, and an algorithm's projectors at their own rate), linear warm-up then cosine decay to a
floor (KDFlow's cosine_with_min_lr), and where its state lives while a colocated engine has the GPU."""

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch

from kubedistill.api.spec import DistillationSpec, LrScheduler, TrainingSpec

OptimizerPlace = Literal["cpu", "device"]
"""Where the optimizer's state lives: the CPU while a colocated engine has the GPU, or the rank's device."""


def warmup_steps(training: TrainingSpec, total_steps: int) -> int:
    return math.ceil(training.warmup_ratio * total_steps)


def lr_factor(step: int, training: TrainingSpec, total_steps: int) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    warmup = warmup_steps(training, total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if training.lr_scheduler == LrScheduler.CONSTANT:
        return 1.0
    floor = training.min_learning_rate / training.learning_rate
    progress = (step - warmup) / max(1, total_steps - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class StudentOptimizer:
    def __init__(
        self,
        model_parameters: Iterable[torch.nn.Parameter],
        projector_parameters: Iterable[torch.nn.Parameter],
        training: TrainingSpec,
        distillation: DistillationSpec,
        total_steps: int,
        device: torch.device,
    ) -> None:
        groups: list[dict[str, Any]] = [
            {"params": [p for p in model_parameters if p.requires_grad]},
            {
                "params": [p for p in projector_parameters if p.requires_grad],
                "lr": distillation.projector_learning_rate,
            },
        ]
        self.optimizer = torch.optim.AdamW(
            [group for group in groups if group["params"]],
            lr=training.learning_rate,
            betas=(training.adam_betas[0], training.adam_betas[1]),
            weight_decay=training.weight_decay,
            # On CPU torch picks the per-parameter loop, one dispatch per op and DTensor parameter; foreach
            # does each op once over all parameters.
            foreach=True,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, training, total_steps)
        )
        self._device = device

    @property
    def learning_rate(self) -> float:
        """The rate of the model's group at the coming step."""
        return float(self.scheduler.get_last_lr()[0])

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def move_state(self, place: OptimizerPlace) -> None:
        """Colocation: the state leaves the GPU while the teacher or rollout engine uses it ("cpu"), and
        comes back for the student's step ("device")."""
        target = self._device if place == "device" else torch.device("cpu")
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    state[key] = value.to(target, non_blocking=True)
        if target.type == "cuda":
            torch.cuda.synchronize(target)
