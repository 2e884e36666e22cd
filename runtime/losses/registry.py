"""Divergences by name: decorator-registered ones first, then the `kubedistill.losses` entry points.

The built-ins are entry points of this package (pyproject.toml), like a plugin package's would be, so the
operator can check a manifest's loss name without importing torch.
"""

from collections.abc import Callable

from torch import Tensor

from kubedistill.api.registry import LOSS_GROUP
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.plugins import Registry

Divergence = Callable[[Tensor, Tensor, KDConfig], Tensor]
"""(student_logits [N, V], teacher_logits [N, V], config) -> per-token divergence [N]; logits already
divided by the temperature."""

LOSSES: Registry[Divergence] = Registry(LOSS_GROUP, "loss")
register_loss = LOSSES.register
get_loss = LOSSES.get
