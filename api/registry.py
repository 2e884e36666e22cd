"""Names of the losses and algorithms a manifest may ask for.

Built-in and plugin implementations register the same way: as Python entry points
(`kubedistill.losses`, `kubedistill.algorithms`), declared in a package's metadata. The names can therefore
be checked here, without importing torch, in the operator as well as in the runtime. The runtime's
`register_loss` / `register_algorithm` decorators also add names here, for code defined at run time.
"""

from importlib.metadata import entry_points

LOSS_GROUP = "kubedistill.losses"
ALGORITHM_GROUP = "kubedistill.algorithms"

_registered_at_runtime: dict[str, set[str]] = {LOSS_GROUP: set(), ALGORITHM_GROUP: set()}


def register_name(group: str, name: str) -> None:
    _registered_at_runtime[group].add(name)


def known_names(group: str) -> list[str]:
    installed = {entry.name for entry in entry_points(group=group)}
    return sorted(installed | _registered_at_runtime[group])


def known_losses() -> list[str]:
    return known_names(LOSS_GROUP)


def known_algorithms() -> list[str]:
    return known_names(ALGORITHM_GROUP)
