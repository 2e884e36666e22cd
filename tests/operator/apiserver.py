"""kmock's Kubernetes emulator with the bookkeeping a real API server does on writes.

kmock stores objects as given. A real API server sets `uid`, `creationTimestamp` and `generation` on
create, bumps `resourceVersion` on every write and `generation` on every spec change; kopf relies on
resourceVersions to recognise its own patches in the watch stream (without them it waits 5 s for each),
and the operator reports `observedGeneration`. This subclass adds exactly that, following kmock's own
advice to inherit for special field treatment.

It also lets tests put faults in front of the emulator (`interceptors`): kmock applies a write even when a
reaction answers it with an error, which models a lost reply but never a rejected request (a 429 is not
applied; a 409 on a patch neither).
"""

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
from kmock._internal import enums, rendering

from kubedistill.operator.runner import USER_AGENT

Interceptor = Callable[["ApiServer", rendering.Request], Awaitable[aiohttp.web.StreamResponse | None]]
"""Sees each request before the emulator: a response answers it (nothing else happens), None passes it on."""


class ApiServer(kmock.KubernetesEmulator):
    _versions = itertools.count(1)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.interceptors: list[Interceptor] = []

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        for intercept in list(self.interceptors):
            if (response := await intercept(self, request)) is not None:
                return response
        return await self.apply(request)

    async def apply(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """What the API server does with a request that gets through: store it and answer."""
        if request.resource is not None:
            if request.action == enums.action.CREATE and isinstance(request.data, Mapping):
                self._stamp_created(request.data)
            elif request.action == enums.action.UPDATE and request.name is not None:
                if isinstance(request.data, Mapping):
                    self._stamp_merge_patch(request, request.data)
                elif isinstance(request.data, list):
                    self._stamp_json_patch(request.data)
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed:
            # kmock answers 500; the API server says 422, which kopf takes as "changed meanwhile, patch
            # again on the next event" rather than retrying the stale patch for a minute.
            return api_error(422)

    def _stamp_created(self, body: dict[str, Any]) -> None:
        metadata = body.setdefault("metadata", {})
        if "generateName" in metadata and not metadata.get("name"):
            # As the API server does (kopf names its Events so); kmock would store them all under no name.
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
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


REASONS = {
    409: "Conflict",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def api_error(status: int, *, retry_after: int | None = None) -> aiohttp.web.Response:
    """A Kubernetes `Status` error as the API server sends it (Retry-After in the header and the details)."""
    details = {"retryAfterSeconds": retry_after} if retry_after is not None else {}
    body = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": status,
        "reason": REASONS[status],
        "message": f"injected fault: HTTP {status}",
        "details": details,
    }
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return aiohttp.web.json_response(body, status=status, headers=headers)


OPERATOR_AGENTS = ("kopf/", USER_AGENT)


@dataclass(frozen=True)
class Call:
    """A kind of request the operator (kopf or its own client) makes: a verb on a resource."""

    action: enums.action
    resource: str
    """`group/version/plural`, as in `kmock.resource`."""
    subresource: str | None = None

    def matches(self, request: rendering.Request) -> bool:
        return (
            request.headers.get("User-Agent", "").startswith(OPERATOR_AGENTS)
            and request.action == self.action
            and request.resource == kmock.resource(self.resource)
            and request.subresource == self.subresource
        )


async def apply_despite_the_error(server: ApiServer, request: rendering.Request) -> None:
    """The server did the write, and then the reply was an error (or never came)."""
    with contextlib.suppress(kmock.KubernetesError):
        await server.apply(request)


@dataclass
class FailFirst:
    """The first `times` requests of `call` fail with `status`; later ones go through.

    `applied`: the server did the write before failing the reply (a 409 on a create says it exists; a 500
    or a timeout may come after the write). Otherwise it did nothing, like a 429 or a rejected patch.
    """

    call: Call
    status: int
    times: int = 1
    applied: bool = False
    retry_after: int | None = None
    seen: list[float] = field(default_factory=list)
    """When each request of `call` arrived (time.monotonic), failed or not."""

    async def __call__(self, server: ApiServer, request: rendering.Request) -> aiohttp.web.Response | None:
        if not self.call.matches(request):
            return None
        self.seen.append(time.monotonic())
        if len(self.seen) > self.times:
            return None
        if self.applied:
            await apply_despite_the_error(server, request)
        return api_error(self.status, retry_after=self.retry_after)


@dataclass
class Hold:
    """Holds the first request of `call` unanswered, so the operator can be stopped while it waits.

    Released after the operator is gone, the request is either lost (never applied) or `applied`.
    """

    call: Call
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _applied: bool = False

    def release(self, *, applied: bool) -> None:
        self._applied = applied
        self._released.set()

    async def __call__(self, server: ApiServer, request: rendering.Request) -> aiohttp.web.Response | None:
        if self.arrived.is_set() or not self.call.matches(request):
            return None
        self.arrived.set()
        await self._released.wait()
        if self._applied:
            await apply_despite_the_error(server, request)
        return api_error(503)


@dataclass
class RandomFaults:
    """Fails a share of the operator's requests with an error drawn from a seeded RNG, among those `calls`
    lists for that kind of request.

    What each means on a real server: a 429 (Retry-After 1) was not applied; a 409 on a create means the
    object exists (here: the write happened), on a merge patch that the server gave up its own retries and
    nothing changed; a 500 may come before or after the write.
    """

    rng: random.Random
    rate: float
    calls: Mapping[Call, Sequence[int]]
    injected: Counter[int] = field(default_factory=Counter)

    async def __call__(self, server: ApiServer, request: rendering.Request) -> aiohttp.web.Response | None:
        statuses = next((statuses for call, statuses in self.calls.items() if call.matches(request)), None)
        if statuses is None or self.rng.random() >= self.rate:
            return None
        status = self.rng.choice(statuses)
        creating = request.action == enums.action.CREATE
        if (status == 409 and creating) or (status == 500 and self.rng.random() < 0.5):
            await apply_despite_the_error(server, request)
        self.injected[status] += 1
        return api_error(status, retry_after=1 if status == 429 else None)


class ArchivingApiServer(ApiServer):
    """For long runs: kmock matches each request against its whole request log, which is quadratic in the
    requests and would make the emulator, not the operator, the bottleneck. Served requests move to
    `archive`."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.archive: list[rendering.Request] = []

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        try:
            return await super()._handle(request)
        finally:
            self.archive.append(request)
            self._requests.remove(request)

    def served(self) -> list[rendering.Request]:
        """Every request so far: those answered, then those still open (watches)."""
        return [*self.archive, *self._requests]
