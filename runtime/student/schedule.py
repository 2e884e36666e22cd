"""The learning-rate schedule: linear warm-up, then cosine decay to a floor (KDFlow's cosine_with_min_lr)."""

import math

from kubedistill.api.spec import LrScheduler, TrainingSpec


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
