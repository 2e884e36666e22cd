"""The time of each optimizer step of a transformers `Trainer` (TRL's trainers are ones), as the benches time
TRL beside KubeDistill: from the start to the end of each step, data loading between steps left out."""

import time
from typing import Any

from transformers import TrainerCallback


class StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step_begin(self, *_: Any, **__: Any) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, *_: Any, **__: Any) -> None:
        self.seconds.append(time.perf_counter() - self.started)
