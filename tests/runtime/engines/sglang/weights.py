"""Pushing weights into an engine the way student rank 0 does for one it reaches with tensors."""

from collections.abc import Iterable

import torch

from kubedistill.runtime.engines.sglang.rollout import SGLangRollout
from kubedistill.runtime.engines.sglang.teacher import SGLangTeacher


def push_weights(
    engine: SGLangTeacher | SGLangRollout, named: Iterable[tuple[str, torch.Tensor]], buckets: int = 1
) -> None:
    """One update session, the tensors in `buckets` consecutive buckets (several: as a large model's are)."""
    tensors = list(named)
    size = -(-len(tensors) // buckets)
    engine.begin_weight_update()
    for start in range(0, len(tensors), size):
        engine.update_weights(tensors[start : start + size])
    engine.end_weight_update()
