"""Reading manifests from YAML files: one or more documents per file."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import yaml

from kubedistill.api.job import KIND, DistillationJob, InvalidJob, parse_job
from kubedistill.api.rules import Problem


def load_documents(path: Path) -> Iterator[Any]:
    with path.open(encoding="utf-8") as stream:
        yield from (document for document in yaml.safe_load_all(stream) if document is not None)


def read_documents(path: Path) -> list[Any]:
    """The file's YAML documents; `InvalidJob` naming the line when it does not parse."""
    try:
        return list(load_documents(path))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        raise InvalidJob([Problem(where, f"not valid YAML: {getattr(error, 'problem', error)}")]) from None


def as_object(value: Any) -> dict[str, Any] | None:
    """`value` when it is an object of the YAML (a mapping, its keys strings), else None."""
    return cast("dict[str, Any]", value) if isinstance(value, dict) else None


def is_job(document: Any) -> bool:
    fields = as_object(document)
    return fields is not None and fields.get("kind") == KIND


def load_jobs(path: Path, *, check_plugin_names: bool = True) -> list[DistillationJob]:
    """Every DistillationJob in a YAML file (other kinds, e.g. a Kueue LocalQueue beside it, are skipped).

    Raises `InvalidJob` for YAML that does not parse or a DistillationJob that does not validate.
    """
    jobs = [
        parse_job(document, check_plugin_names=check_plugin_names)
        for document in read_documents(path)
        if is_job(document)
    ]
    if not jobs:
        raise InvalidJob([Problem("kind", f"no {KIND} in this file")])
    return jobs


def load_job(path: Path) -> DistillationJob:
    """The single DistillationJob a file holds (what `kubedistill run` takes)."""
    jobs = load_jobs(path)
    if len(jobs) > 1:
        raise InvalidJob([Problem("kind", f"{len(jobs)} {KIND}s in this file; run one at a time")])
    return jobs[0]
