"""Distillation losses: pure functions over logits, and a fused chunked variant over hidden states."""

from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.losses.fused import fused_kd_loss
from kubedistill.runtime.losses.output import IGNORE_INDEX, LossOutput
from kubedistill.runtime.losses.reference import reference_kd_loss
from kubedistill.runtime.losses.registry import Divergence, get_loss, register_loss

__all__ = [
    "IGNORE_INDEX",
    "Divergence",
    "KDConfig",
    "LossOutput",
    "fused_kd_loss",
    "get_loss",
    "reference_kd_loss",
    "register_loss",
]
