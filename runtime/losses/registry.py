"""Implementations by name: a registry fed by a decorator and by Python entry points, and the divergences'.

Built-in losses and algorithms are entry points of this package (pyproject.toml), exactly like a plugin
package's, so `kubedistill.api` (and the operator) can check a manifest's names without importing torch; the
decorator adds implementations defined at run time (tests, notebooks) and tells the API about their names.
Divergences are looked up decorator-registered first, then among the `kubedistill.losses` entry points.
"""

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from torch import Tensor

from kubedistill.api.registry import LOSS_GROUP, known_names, register_name
from kubedistill.runtime.losses.config import KDConfig

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, group: str, what: str) -> None:
        self.group = group
        self.what = what
        self._registered: dict[str, T] = {}
        self._loaded: dict[str, T] = {}
        """Entry points already loaded: a loss is looked up on every micro-batch, and reading the installed
        distributions' entry points takes milliseconds (about 10 ms on a busy 2-core machine, as long as a
        tiny model's forward pass)."""

    def register(self, name: str) -> Callable[[T], T]:
        def register(implementation: T) -> T:
            self._registered[name] = implementation
            register_name(self.group, name)
            return implementation

        return register

    def get(self, name: str) -> T:
        if name in self._registered:
            return self._registered[name]
        if name not in self._loaded:
            found = entry_points(group=self.group, name=name)
            if not found:
                known = ", ".join(known_names(self.group))
                raise LookupError(f"unknown {self.what} {name!r}; known: {known}")
            self._loaded[name] = found[name].load()
        return self._loaded[name]


Divergence = Callable[[Tensor, Tensor, KDConfig], Tensor]
"""(student_logits [N, V], teacher_logits [N, V], config) -> per-token divergence [N]; logits already
divided by the temperature."""

LOSSES: Registry[Divergence] = Registry(LOSS_GROUP, "loss")
register_loss = LOSSES.register
get_loss = LOSSES.get
