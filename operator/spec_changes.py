"""Which edits of a created job's spec reach its RayJob, and which are ignored.

A running job's spec is fixed, like a Kubernetes Job's pod template: the runtime read it once. Only
`suspend` and `ttlSecondsAfterFinished` are applied to the RayJob. Specs are compared after validation,
so writing a default out explicitly is no change.
"""

from dataclasses import dataclass
from typing import Any

from kubedistill.api.manifest import as_object
from kubedistill.api.spec import DistillationJobSpec

MUTABLE_FIELDS = ("suspend", "ttlSecondsAfterFinished")


@dataclass(frozen=True)
class SpecChange:
    rayjob_patch: dict[str, Any]
    """Merge patch of the RayJob's spec: the wanted values of the fields that apply (idempotent)."""
    ignored: tuple[str, ...]
    """Field paths (`spec.student.replicas`) that differ from what the job was created with and cannot
    change after creation."""


def classify(deployed: DistillationJobSpec, wanted: DistillationJobSpec) -> SpecChange:
    """Compare the spec the job was created from with the wanted one."""
    old, new = _dump(deployed), _dump(wanted)
    mutable = {f"spec.{name}" for name in MUTABLE_FIELDS}
    ignored = [path for path in changed_paths(old, new) if path not in mutable]
    patch: dict[str, Any] = {"ttlSecondsAfterFinished": wanted.ttl_seconds_after_finished}
    if wanted.cluster.queue_name is None:
        patch["suspend"] = wanted.suspend
    elif new["suspend"] != old["suspend"]:
        # Kueue owns a queued RayJob's suspend flag; overriding it would fight the admission.
        ignored.append("spec.suspend")
    return SpecChange(patch, tuple(sorted(ignored)))


def changed_paths(old: Any, new: Any, prefix: str = "spec") -> list[str]:
    """Leaf paths where two JSON values differ; lists compare whole (`spec.cluster.volumes`)."""
    old_fields, new_fields = as_object(old), as_object(new)
    if old_fields is not None and new_fields is not None:
        paths: list[str] = []
        for key in sorted(set(old_fields) | set(new_fields)):
            paths.extend(changed_paths(old_fields.get(key), new_fields.get(key), f"{prefix}.{key}"))
        return paths
    return [] if old == new else [prefix]


def _dump(spec: DistillationJobSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)
