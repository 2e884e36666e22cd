"""Divergences by name: decorator-registered ones first, then the `kubedistill.losses` entry points.

The built-ins are entry points of this package (pyproject.toml), like a plugin package's would be, so the
operator can check a manifest's loss name without importing torch.
"""

import functools
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
    return _entry_point_loss(name)


@functools.cache
def _entry_point_loss(name: str) -> Divergence:
    # The loss is looked up on every micro-batch, and reading the installed distributions' entry points
    # takes milliseconds (about 10 ms on a busy 2-core machine, as long as a tiny model's forward pass).
    found = entry_points(group=LOSS_GROUP, name=name)
    if not found:
        raise LookupError(f"unknown loss {name!r}; known: {', '.join(known_losses())}")
    return found[name].load()
