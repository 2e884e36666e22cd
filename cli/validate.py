"""`kubedistill validate`: check every DistillationJob in manifest files or folders of them.

Repositories keep jobs beside other objects (an Argo CD Application, a PersistentVolumeClaim, a Kueue
queue), and CI runs `kubedistill validate examples/**`: other kinds are skipped with a note, a file without
jobs says so, and only an invalid job (or YAML that does not parse) makes the exit status 1.
"""

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kubedistill.api.job import GROUP, KIND, InvalidJob, parse_job
from kubedistill.api.manifest import as_object, is_job, read_documents

YAML_SUFFIXES = (".yaml", ".yml")


def validate_manifests(paths: Iterable[Path], echo: Callable[..., Any]) -> int:
    """Print `FILE: field.path: problem` for each problem (to stderr), a line per file and per skipped
    document; the exit status: 1 when a job is invalid or a file does not parse, else 0."""
    failed = False
    for path in manifest_files(paths):
        try:
            documents = read_documents(path)
        except InvalidJob as invalid:
            failed = True
            for problem in invalid.problems:
                echo(f"{path}: {problem}", err=True)
            continue
        names: list[str] = []
        for document in documents:
            if _mistyped_kind(document):
                failed = True
                echo(
                    f"{path}: kind: {document['kind']!r} is not a kind of {GROUP}; expected {KIND}", err=True
                )
                continue
            if not is_job(document):
                echo(f"{path}: skipped {_describe(document)}: not a {KIND}")
                continue
            try:
                names.append(parse_job(document).name)
            except InvalidJob as invalid:
                failed = True
                for problem in invalid.problems:
                    echo(f"{path}: {problem}", err=True)
        if names:
            echo(f"{path}: valid ({', '.join(names)})")
        elif not any(is_job(document) or _mistyped_kind(document) for document in documents):
            echo(f"{path}: no {KIND} in this file")
    return 1 if failed else 0


def manifest_files(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a folder stands for the YAML files below it. Each file once, in order (a shell's
    `examples/**` names a folder and the files in it)."""
    files: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            found = (each for each in sorted(path.rglob("*")) if each.suffix in YAML_SUFFIXES)
            files.update((each, None) for each in found if each.is_file())
        else:
            files[path] = None
    return list(files)


def _mistyped_kind(document: Any) -> bool:
    """A document of our API group that is not a job: a typo, never a neighbour to skip."""
    fields = as_object(document)
    if fields is None or is_job(document):
        return False
    return str(fields.get("apiVersion", "")).split("/")[0] == GROUP


def _describe(document: Any) -> str:
    fields = as_object(document)
    if fields is None:
        return f"a document that is not an object ({type(document).__name__})"
    kind = fields.get("kind") or "a document without kind"
    metadata = as_object(fields.get("metadata"))
    name = metadata.get("name") if metadata is not None else None
    return f"{kind} {name!r}" if name else str(kind)
