"""The one module that reaches into kmock's private parts (kmock 0.8, pinned in pyproject.toml).

kmock's public API serves, stores and records requests; what a test of an operator also needs is the
kind of each request, its parsed form, and a way for the emulator to delete a stored object by itself
(garbage collection), which kmock only does when answering a DELETE, and a look at each watch event as kmock
publishes it (the emulator keeps a window of them for watches that resume). If kmock changes, only this
changes.
"""

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import kmock
from kmock._internal import aiobus, enums, rendering

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


Recorder = Callable[[Any, dict[str, Any]], dict[str, Any]]
"""(resource, watch event) -> the event as watchers see it; called once for each event kmock publishes."""


@attrs.mutable(weakref_slot=True)
class _RecordingBus(aiobus.Bus[Any]):
    """kmock's per-resource event bus, with each published event passed through a recorder first."""

    resource: Any = None
    recorder: Recorder | None = None

    async def put(self, *items: Any) -> None:
        if self.recorder is not None:
            items = tuple(self.recorder(self.resource, item) for item in items)
        await super().put(*items)


class _RecordingBuses(dict[Any, aiobus.Bus[Any]]):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self._recorder = recorder

    def __missing__(self, resource: Any) -> aiobus.Bus[Any]:
        bus = self[resource] = _RecordingBus(resource=resource, recorder=self._recorder)
        return bus


def record_events(server: kmock.KubernetesEmulator, recorder: Recorder) -> None:
    """Pass every watch event kmock publishes (its own and `delete_stored`'s) through `recorder`."""
    server._buses = _RecordingBuses(recorder)


@contextlib.asynccontextmanager
async def events_after_now(
    server: kmock.KubernetesEmulator, resource: Any
) -> AsyncIterator[AsyncIterator[Any]]:
    """The events of `resource` published from now on, as an iterator (subscribed before it yields)."""
    bus = server._buses[resource]
    marker = await bus.mark()
    try:
        yield bus.stream(since=marker)
    finally:
        await bus.unmark(marker)
