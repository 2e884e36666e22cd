"""The one module that reaches into kmock's private parts (kmock 0.8, pinned in pyproject.toml).

kmock's public API serves, stores and records requests; what a test of an operator also needs is the
kind of each request, its parsed form, and a way for the emulator to delete a stored object by itself
(garbage collection), which kmock only does when answering a DELETE. If kmock changes, only this changes.
"""

from typing import Any

import kmock
from kmock._internal import enums, rendering

Action = enums.action
"""What a request does: LIST, WATCH, FETCH (get), CREATE, UPDATE (patch), DELETE."""
Request = rendering.Request
Payload = rendering.Payload

ObjectKey = tuple[Any, str | None, str]
"""(kmock.resource, namespace, name), as `kmock.objects` is keyed."""


async def delete_stored(server: kmock.KubernetesEmulator, key: ObjectKey) -> None:
    """Delete a stored object as the API server would on its own (the garbage collector): marked for
    deletion while it has finalizers, else gone, with the watch event either way."""
    resource = key[0]
    async with server._lock:
        stored = server._objects[key]
        if stored.deleted or stored.get("metadata", {}).get("deletionTimestamp"):
            return
        if stored.get("metadata", {}).get("finalizers"):
            stored.patch({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})
            await server._buses[resource].put({"type": "MODIFIED", "object": stored.raw})
        else:
            raw = stored.raw
            stored.delete()
            await server._buses[resource].put({"type": "DELETED", "object": raw})
