"""The student's optimizer and its learning-rate schedule, built in one place: AdamW over two parameter
groups (the model's, and an algorithm's projectors at their own rate), linear warm-up then the schedule's
decay to a floor, and where its state lives while a colocated engine has the GPU.

After the warm-up, with progress x from 0 to 1 over the remaining steps and f = minLearningRate /
learningRate, the multiplier of the peak is

    cosineWithMinLr     f + (1 - f) (1 + cos(pi x)) / 2                 (KDFlow's default, transformers'
                                                                          cosine_with_min_lr)
    linear              f + (1 - f) (1 - x)
    cosineWithRestarts  f + (1 - f) (1 + cos(pi ((c x) mod 1))) / 2      c = lrCycles (transformers'
                                                                          cosine_with_hard_restarts, floored)
    wsd                 1 until the last d = ceil(lrDecayRatio x steps) steps, then f + (1 - f) (1 - y),
                        y from 0 to 1 over those d steps (warmup-stable-decay; linear decay as in Hagele
                        et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
                        Durations")
    constant            1
"""

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
    schedule = training.lr_scheduler
    if schedule == LrScheduler.CONSTANT:
        return 1.0
    floor = training.min_learning_rate / training.learning_rate
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule == LrScheduler.LINEAR:
        remaining = 1.0 - progress
    elif schedule == LrScheduler.COSINE_WITH_RESTARTS:
        # At the end of the last cycle the rate stays at the floor instead of restarting.
        cycle = (training.lr_cycles * progress) % 1.0 if progress < 1.0 else 1.0
        remaining = 0.5 * (1.0 + math.cos(math.pi * cycle))
    elif schedule == LrScheduler.WSD:
        decay = max(1, math.ceil(training.lr_decay_ratio * total_steps))
        remaining = 1.0 - min(1.0, max(0, step - (total_steps - decay)) / decay)
    else:
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * remaining


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
