"""Which of a job's paths lie on no volume of its pods: there they resolve inside the container image, and
what the job writes there is gone when the pod is (a retry starts from no checkpoint, the export is lost).

Pure: decided from the spec and the rendered head pod, whose volumes every Ray pod shares.
"""

import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubedistill.api.job import DistillationJob
from kubedistill.api.spec import DistillationJobSpec
from kubedistill.api.status import ConditionType, Reason
from kubedistill.operator.conditions import DesiredCondition, Status, with_conditions

URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
WRITTEN_FIELDS = frozenset({"spec.checkpoint.path", "spec.output.path"})
"""Written by the job, so a volume that lives only as long as the pod (emptyDir) does not keep them."""


@dataclass(frozen=True)
class MisplacedPath:
    field: str
    path: str
    why: str

    def __str__(self) -> str:
        return f"{self.field}: {self.path} {self.why}"


def misplaced_paths(job: DistillationJob, rayjob: Mapping[str, Any]) -> list[MisplacedPath]:
    """The job's file paths that are on no mounted volume (or, when written, on an emptyDir)."""
    pod = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = [
        (mount["mountPath"], volumes.get(mount["name"], {}))
        for container in pod["containers"]
        for mount in container.get("volumeMounts", [])
    ]
    problems: list[MisplacedPath] = []
    for field, path, is_file_path in _paths(job.spec):
        if URL.match(path) or not (is_file_path or _looks_like_a_path(path)):
            continue
        volume = _volume_holding(path, mounts)
        if volume is None:
            where = "is inside the container image" if path.startswith("/") else "is relative to the image"
            problems.append(MisplacedPath(field, path, f"{where}: no volume is mounted there"))
        elif field in WRITTEN_FIELDS and "emptyDir" in volume:
            problems.append(MisplacedPath(field, path, "is on an emptyDir, which goes with the pod"))
    return problems


def _paths(spec: DistillationJobSpec) -> Iterator[tuple[str, str, bool]]:
    """(field, value, whether the field only ever holds a file path rather than a path or a hub id)."""
    if spec.teacher is not None:
        yield from _maybe("spec.teacher.model", spec.teacher.model, False)
        yield from _maybe("spec.teacher.tokenizer", spec.teacher.tokenizer, False)
    for index, teacher in enumerate(spec.teachers or []):
        yield from _maybe(f"spec.teachers[{index}].model", teacher.model, False)
        yield from _maybe(f"spec.teachers[{index}].tokenizer", teacher.tokenizer, False)
    yield from _maybe("spec.student.model", spec.student.model, False)
    yield from _maybe("spec.student.tokenizer", spec.student.tokenizer, False)
    for field, source in spec.data.training_sources:
        yield from _maybe(f"{field}.path", source.path, True)
    if spec.data.eval is not None:
        yield from _maybe("spec.data.eval.path", spec.data.eval.path, True)
    yield from _maybe("spec.checkpoint.path", spec.checkpoint.path, True)
    yield from _maybe("spec.output.path", spec.output.path, True)


def _maybe(field: str, value: str | None, is_file_path: bool) -> Iterator[tuple[str, str, bool]]:
    if value is not None:
        yield field, value, is_file_path


def _looks_like_a_path(value: str) -> bool:
    # A hub id is `name` or `org/name`; transformers reads anything else as a local path.
    return value.startswith(("/", "./", "../", "~")) or value.count("/") > 1


def _volume_holding(path: str, mounts: list[tuple[str, Mapping[str, Any]]]) -> Mapping[str, Any] | None:
    if not path.startswith("/"):
        return None
    path = posixpath.normpath(path)
    best: tuple[int, Mapping[str, Any]] | None = None
    for mount_path, volume in mounts:
        mount_path = posixpath.normpath(mount_path)
        if (path == mount_path or path.startswith(mount_path.rstrip("/") + "/")) and (
            best is None or len(mount_path) > best[0]
        ):
            best = (len(mount_path), volume)
    return None if best is None else best[1]


def storage_status(
    status: Mapping[str, Any], problems: list[MisplacedPath], *, generation: int | None, now: str
) -> Status:
    """EphemeralStorage True naming each misplaced field; nothing when every path is on a volume."""
    if not problems:
        return dict(status)
    message = "; ".join(str(problem) for problem in problems) + (
        "; mount a volume there (spec.cluster.volumes and volumeMounts)"
    )
    warning = DesiredCondition(ConditionType.EPHEMERAL_STORAGE, "True", Reason.PATH_NOT_ON_VOLUME, message)
    return with_conditions(status, [warning], generation=generation, now=now)
