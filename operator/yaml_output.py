"""Kubernetes objects as multi-document YAML that reads well in a diff."""

from collections.abc import Iterable
from typing import Any

import yaml


class _ManifestDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)  # pyright: ignore[reportUnknownMemberType]


_ManifestDumper.add_representer(str, _represent_str)


def dump_all(objects: Iterable[dict[str, Any]]) -> str:
    """Keys in the order the renderer wrote them; multi-line strings (the job's manifest) as blocks."""
    return yaml.dump_all(objects, Dumper=_ManifestDumper, sort_keys=False, width=110, allow_unicode=True)
