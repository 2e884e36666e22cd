"""The one writer of DistillationJob status.

Handlers of the job, of its RayJob and the progress reader all change the same status, concurrently.
Each change is a pure function of the current status; the writer applies them one at a time per job,
starting from the status it last wrote (the watch stream may still show an older one), and sends a merge
patch to the status subresource only when something changed. Conditions are a list, which a merge patch
replaces whole, so applying changes serially is what keeps one writer from dropping another's.
"""

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubedistill.operator.conditions import with_fields
from kubedistill.operator.kube import Kube
from kubedistill.operator.metrics import OperatorMetrics

Status = dict[str, Any]
StatusChange = Callable[[Status, int | None], Status]
"""(current status, the job's generation) -> the wanted status."""
JobKey = tuple[str, str]


@dataclass
class _Known:
    status: Status
    generation: int | None
    uid: str | None


@dataclass
class StatusWriter:
    kube: Kube
    metrics: OperatorMetrics
    _known: dict[JobKey, _Known] = field(default_factory=dict[JobKey, _Known])
    _locks: dict[JobKey, asyncio.Lock] = field(default_factory=dict[JobKey, asyncio.Lock])

    def observe(self, key: JobKey, body: Mapping[str, Any]) -> None:
        """Learn a job from its body: its status (when not known yet) and its newest generation."""
        metadata = body.get("metadata", {})
        generation = metadata.get("generation")
        known = self._known.get(key)
        if known is not None and metadata.get("uid") not in (None, known.uid):
            self.forget(key)  # deleted and created again under the same name
            known = None
        if known is None:
            status = dict(body.get("status") or {})
            self._known[key] = _Known(status, generation, metadata.get("uid"))
            self.metrics.phase_changed(None, status.get("phase"))
        elif generation is not None and (known.generation is None or generation > known.generation):
            known.generation = generation

    def status(self, key: JobKey) -> Status | None:
        known = self._known.get(key)
        return dict(known.status) if known else None

    def uid(self, key: JobKey) -> str | None:
        known = self._known.get(key)
        return known.uid if known else None

    async def change(self, key: JobKey, change: StatusChange) -> Status | None:
        """Apply `change(status, generation)`; patch what differs. None when the job is unknown or gone."""
        async with self._locks.setdefault(key, asyncio.Lock()):
            known = self._known.get(key)
            if known is None:
                return None
            new = change(dict(known.status), known.generation)
            if known.generation is not None:
                new = with_fields(new, observed_generation=known.generation)
            patch = _merge_patch(known.status, new)
            if not patch:
                return new
            if not await self.kube.patch_job_status(*key, patch):
                self.forget(key)
                return None
            self.metrics.phase_changed(known.status.get("phase"), new.get("phase"))
            known.status = new
            return new

    def forget(self, key: JobKey) -> None:
        known = self._known.pop(key, None)
        self._locks.pop(key, None)
        if known is not None:
            self.metrics.phase_changed(known.status.get("phase"), None)


def _merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> Status:
    """Top-level keys that changed (null for removed ones); lists and objects are sent whole."""
    patch: Status = {key: value for key, value in new.items() if old.get(key) != value}
    patch.update({key: None for key in old if key not in new})
    return patch
