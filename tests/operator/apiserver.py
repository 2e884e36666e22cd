"""kmock's Kubernetes emulator with the bookkeeping a real API server does on writes.

kmock stores objects as given. A real API server sets `uid`, `creationTimestamp` and `generation` on
create, bumps `resourceVersion` on every write and `generation` on every spec change; kopf relies on
resourceVersions to recognise its own patches in the watch stream (without them it waits 5 s for each),
and the operator reports `observedGeneration`. This subclass adds exactly that, following kmock's own
advice to inherit for special field treatment.
"""

import itertools
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp.web
import kmock
from kmock._internal import enums, rendering


class ApiServer(kmock.KubernetesEmulator):
    _versions = itertools.count(1)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None:
            if request.action == enums.action.CREATE and isinstance(request.data, Mapping):
                self._stamp_created(request.data)
            elif request.action == enums.action.UPDATE and request.name is not None:
                if isinstance(request.data, Mapping):
                    self._stamp_merge_patch(request, request.data)
                elif isinstance(request.data, list):
                    self._stamp_json_patch(request.data)
        return await super()._handle(request)

    def _stamp_created(self, body: dict[str, Any]) -> None:
        metadata = body.setdefault("metadata", {})
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        metadata.setdefault("generation", 1)
        metadata["resourceVersion"] = str(next(self._versions))

    def _stamp_json_patch(self, operations: list[dict[str, Any]]) -> None:
        # Appended, so a `test` of the old resourceVersion (kopf's optimistic lock) still sees the old one.
        version = str(next(self._versions))
        operations.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})

    def _stamp_merge_patch(self, request: rendering.Request, patch: dict[str, Any]) -> None:
        metadata = patch.setdefault("metadata", {})
        metadata["resourceVersion"] = str(next(self._versions))
        key = (request.resource, request.namespace, request.name)
        if "spec" in patch and request.subresource is None and key in self.objects:
            current = self.objects[key]
            if not current.deleted:
                metadata["generation"] = current.get("metadata", {}).get("generation", 1) + 1
