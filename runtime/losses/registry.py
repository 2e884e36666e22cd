"""Divergences by name: decorator-registered ones first, then the `kubedistill.losses` entry points.

The built-ins are entry points of this package (pyproject.toml), like a plugin package's would be, so the
operator can check a manifest's loss name without importing torch.
"""

from collections.abc import Callable
from importlib.metadata import entry_points

from torch import Tensor

from kubedistill.api.registry import LOSS_GROUP, known_losses, register_name
from kubedistill.runtime.losses.config import KDConfig

Divergence = Callable[[Tensor, Tensor, KDConfig], Tensor]
"""(student_logits [N, V], teacher_logits [N, V], config) -> per-token divergence [N]; logits already
divided by the temperature."""

_registered: dict[str, Divergence] = {}


def register_loss(name: str) -> Callable[[Divergence], Divergence]:
    def register(divergence: Divergence) -> Divergence:
        _registered[name] = divergence
        register_name(LOSS_GROUP, name)
        return divergence

    return register


def get_loss(name: str) -> Divergence:
    if name in _registered:
        return _registered[name]
    found = entry_points(group=LOSS_GROUP, name=name)
    if not found:
        raise LookupError(f"unknown loss {name!r}; known: {', '.join(known_losses())}")
    return found[name].load()
