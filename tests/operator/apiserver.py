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
import collections
import contextlib
import copy
import itertools
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import jsonpatch
import kmock

from kubedistill.api.job import GROUP, KIND
from kubedistill.operator.rbac import Rule, allowed
from kubedistill.operator.runner import USER_AGENT
from tests.operator import structural
from tests.operator.kmock_adapter import (
    Action,
    Payload,
    Request,
    delete_stored,
    events_after_now,
    record_events,
)

Interceptor = Callable[["ApiServer", Request], Awaitable[aiohttp.web.StreamResponse | None]]
"""Sees each request before the emulator: a response answers it (nothing else happens), None passes it on."""


WATCH_HISTORY = 1000
"""Events kept per resource for watches that resume from a resourceVersion. kube-apiserver keeps a window
of them too (its watch cache, `--default-watch-cache-size`, and etcd's compaction); a watch from before
the window gets `410 Gone` ("too old resource version"), and kopf lists again (kopf 1.45.2
`_cogs/clients/watching.py:205-210`)."""


class ApiServer(kmock.KubernetesEmulator):
    _versions = itertools.count(1)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.watch_history = WATCH_HISTORY
        self.latest_version = 0
        self._history: dict[Any, collections.deque[tuple[int, dict[str, Any]]]] = collections.defaultdict(
            collections.deque
        )
        self._expired: dict[Any, int] = collections.defaultdict(int)
        """Per resource, the newest resourceVersion that left the window."""
        record_events(self, self._record)
        self.interceptors: list[Interceptor] = []
        self.cel_rules = True
        """False: a CRD installed from an older release, without the CEL rules (specs slip past them)."""

    async def _handle(self, request: Request) -> aiohttp.web.StreamResponse:
        for intercept in list(self.interceptors):
            if (response := await intercept(self, request)) is not None:
                return response
        return await self.apply(request)

    async def apply(self, request: Request) -> aiohttp.web.StreamResponse:
        """What the API server does with a request that gets through: store it and answer."""
        if request.resource is not None and request.resource.plural is not None and not self.serves(request):
            # kmock stores objects of any resource; the API server knows only what discovery shows.
            return api_error(404, message="the server could not find the requested resource")
        if request.resource is not None and self._has_status_subresource(request):
            _keep_status_apart(request)
        if (
            request.resource == kmock.resource(JOBS)
            and isinstance(request.data, dict)
            and (invalid := self._structural(request, request.data)) is not None
        ):
            return invalid
        if request.resource is not None:
            if request.action == Action.CREATE and isinstance(request.data, Mapping):
                self._stamp_created(request, request.data)
            elif request.action == Action.UPDATE and request.name is not None:
                if isinstance(request.data, Mapping):
                    self._stamp_merge_patch(request, request.data)
                elif isinstance(request.data, list):
                    self._stamp_json_patch(request.data)
        try:
            response = await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed:
            # kmock answers 500; the API server says 422, which kopf takes as "changed meanwhile, patch
            # again on the next event" rather than retrying the stale patch for a minute.
            return api_error(422)
        if request.action in (Action.DELETE, Action.UPDATE) and self._gone(request):
            await self._collect_garbage()
        return response

    def _structural(self, request: Request, data: dict[str, Any]) -> aiohttp.web.Response | None:
        """The CRD's schema on a create or a merge patch: the stored result pruned and defaulted, or 422."""
        key = (request.resource, request.namespace, request.name or data.get("metadata", {}).get("name"))
        live = key in self.objects and not self.objects[key].deleted
        current = self.objects[key].raw if live else None
        if request.action == Action.UPDATE and current is None:
            return None  # kmock answers 404
        if request.action not in (Action.CREATE, Action.UPDATE):
            return None
        wanted = merge_patched(current, data) if request.action == Action.UPDATE else data
        final = structural.pruned_and_defaulted(wanted)
        if problems := structural.problems(final, cel_rules=self.cel_rules):
            name = final.get("metadata", {}).get("name")
            return api_error(422, message=f'{KIND}.{GROUP} "{name}" is invalid: ' + "; ".join(problems))
        replacement = structural.merge_patch_between(current, final) if current is not None else final
        data.clear()
        data.update(replacement)
        return None

    def _gone(self, request: Request) -> bool:
        """Whether the request's object is gone now (a DELETE, or a patch that removed its last finalizer)."""
        key = (request.resource, request.namespace, request.name)
        return key in self.objects and self.objects[key].deleted

    async def _collect_garbage(self) -> None:
        """The garbage collector's background cascading deletion: an object all of whose owners (by uid)
        are gone is deleted too, and so on down (kubernetes.io/docs/concepts/architecture/
        garbage-collection)."""
        while True:
            live = {obj.get("metadata", {}).get("uid") for obj in self.objects.values() if not obj.deleted}
            orphans = [
                key
                for key, obj in self.objects.items()
                if not obj.deleted
                and not obj.get("metadata", {}).get("deletionTimestamp")
                and (owners := obj.get("metadata", {}).get("ownerReferences"))
                and not any(owner.get("uid") in live for owner in owners)
            ]
            if not orphans:
                return
            for key in orphans:
                await delete_stored(self, key)

    def _has_status_subresource(self, request: Request) -> bool:
        return any(
            self._same(served, request) and "status" in info.subresources
            for served, info in self.resources.items()
        )

    def serves(self, request: Request) -> bool:
        return any(self._same(served, request) for served in self.resources)

    @staticmethod
    def _same(served: Any, request: Request) -> bool:
        wanted = request.resource
        assert wanted is not None
        return (served.group or "", served.version, served.plural) == (
            wanted.group or "",
            wanted.version,
            wanted.plural,
        )

    async def _serve_list(self, request: Request) -> Payload:
        payload = await super()._serve_list(request)
        selector = LabelSelector.parse(request.params.get("labelSelector", ""))
        items = [item for item in payload["items"] if selector.matches(item)]
        # A list is a snapshot at a resourceVersion, from which a watch continues (kmock answers "...").
        return {**payload, "metadata": {"resourceVersion": str(self.latest_version)}, "items": items}

    async def _serve_watch(self, request: Request) -> AsyncIterator[Payload]:
        """As the API server's watch cache does with a label selector: only matching objects, and an
        object that stops (or starts) matching is DELETED (or ADDED) for this watch."""
        selector = LabelSelector.parse(request.params.get("labelSelector", ""))
        since = request.params.get("resourceVersion", "")
        if since.isdigit() and since != "0":
            events, matching = self._watch_since(request, int(since), selector)
        else:  # "" or "0": the current objects as ADDED, then the changes (kmock does exactly that)
            events, matching = super()._serve_watch(request), set()
        async for event in events:
            if not isinstance(event, Mapping) or event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
                yield event
                continue
            metadata = event["object"].get("metadata", {})
            key = (metadata.get("namespace"), metadata.get("name"))
            was, now = key in matching, selector.matches(event["object"]) and event["type"] != "DELETED"
            if now:
                matching.add(key)
                yield {**event, "type": "MODIFIED" if was else "ADDED"}
            elif was:
                matching.discard(key)
                yield {**event, "type": "DELETED"}

    def _next_version(self) -> str:
        self.latest_version = next(self._versions)
        return str(self.latest_version)

    def _record(self, resource: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Keep each watch event in the resource's window, with a resourceVersion newer than every earlier
        one: a deletion is a write of its own, and so is kmock's marking of an object for deletion (which
        it stores without a new resourceVersion)."""
        event = copy.deepcopy(event)
        metadata = event["object"].setdefault("metadata", {})
        history = self._history[resource]
        newest = history[-1][0] if history else self._expired[resource]
        version = int(metadata.get("resourceVersion") or 0)
        if event["type"] == "DELETED" or version <= newest:
            version = int(self._next_version())
            metadata["resourceVersion"] = str(version)
        if len(history) >= self.watch_history:
            self._expired[resource] = history.popleft()[0]
        history.append((version, event))
        return event

    def _in_scope(self, request: Request, event: Mapping[str, Any]) -> bool:
        return request.namespace is None or event["object"]["metadata"].get("namespace") == request.namespace

    def _watch_since(
        self, request: Request, since: int, selector: "LabelSelector"
    ) -> tuple[AsyncIterator[Payload], set[tuple[str | None, str | None]]]:
        """A watch that continues from `since`: the changes after it, in order, and no replay of what the
        watcher saw already; `410 Gone` in the stream when `since` left the window. The second value is
        the objects that matched the selector at `since`, filled in before the first event."""
        resource = request.resource
        matching: set[tuple[str | None, str | None]] = set()

        async def events() -> AsyncIterator[Payload]:
            if since < self._expired[resource]:
                yield b""
                yield {"type": "ERROR", "object": _gone_status(since, self._expired[resource])}
                return
            # Subscribed before the window is read: an event is in the window, in the stream, or both.
            async with events_after_now(self, resource) as live:
                later = [event for version, event in self._history[resource] if version > since]
                # What matched at `since`: an object's first later event says whether it existed then
                # (anything but ADDED); one that has not changed since is as it is now.
                first: dict[tuple[str | None, str | None], dict[str, Any]] = {}
                for event in later:
                    first.setdefault(_name_of(event), event)
                matching.update(
                    name
                    for key, obj in self.objects.items()
                    if key[0] == resource
                    and not obj.deleted
                    and (name := _name_of({"object": obj.raw})) not in first
                    and selector.matches(obj.raw)
                )
                matching.update(
                    name
                    for name, event in first.items()
                    if event["type"] != "ADDED" and selector.matches(event["object"])
                )
                yield b""  # the headers go out at once, as for every watch
                newest = since
                for event in later:
                    newest = _version_of(event)
                    if self._in_scope(request, event):
                        yield event
                async for event in live:
                    if _version_of(event) > newest and self._in_scope(request, event):
                        yield event

        return events(), matching

    def _stamp_created(self, request: Request, body: dict[str, Any]) -> None:
        metadata = body.setdefault("metadata", {})
        if request.namespace is not None:
            metadata.setdefault("namespace", request.namespace)  # from the URL
        if "generateName" in metadata and not metadata.get("name"):
            # As the API server does (kopf names its Events so); kmock would store them all under no name.
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        metadata.setdefault("generation", 1)
        metadata["resourceVersion"] = self._next_version()

    def _stamp_json_patch(self, operations: list[dict[str, Any]]) -> None:
        # Appended, so a `test` of the old resourceVersion (kopf's optimistic lock) still sees the old one.
        version = self._next_version()
        operations.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})

    def _stamp_merge_patch(self, request: Request, patch: dict[str, Any]) -> None:
        metadata = patch.setdefault("metadata", {})
        metadata["resourceVersion"] = self._next_version()
        key = (request.resource, request.namespace, request.name)
        if "spec" in patch and request.subresource is None and key in self.objects:
            current = self.objects[key]
            spec = current.get("spec")
            if not current.deleted and merge_patched(spec, patch["spec"]) != spec:
                metadata["generation"] = current.get("metadata", {}).get("generation", 1) + 1


def _name_of(event: Mapping[str, Any]) -> tuple[str | None, str | None]:
    metadata = event["object"].get("metadata", {})
    return metadata.get("namespace"), metadata.get("name")


def _version_of(event: Mapping[str, Any]) -> int:
    return int(event["object"]["metadata"]["resourceVersion"])


def _gone_status(since: int, expired: int) -> dict[str, Any]:
    """What kube-apiserver sends in a watch stream that starts before its window (a metav1.Status)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {since} ({expired + 1})",
        "reason": "Expired",
        "code": 410,
    }


def _keep_status_apart(request: Request) -> None:
    """A resource with the status subresource ignores status in writes to itself, and its /status ignores
    everything but status (kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/
    custom-resource-definitions/#status-subresource)."""
    data = request.data
    to_status = request.subresource == "status"
    if isinstance(data, dict) and request.action in (Action.CREATE, Action.UPDATE):
        if to_status:
            for key in [key for key in data if key != "status"]:
                del data[key]
        else:
            data.pop("status", None)
    elif isinstance(data, list) and request.action == Action.UPDATE:
        # kopf's optimistic lock (`test` of the resourceVersion) stays in either.
        data[:] = [
            op
            for op in data
            if op.get("op") == "test" or op.get("path", "").startswith("/status") == to_status
        ]


def merge_patched(target: Any, patch: Any) -> Any:
    """`target` after a JSON merge patch (RFC 7386)."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patched(result.get(key), value)
    return result


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    """One of `exists`, `!`, `in`, `notin` (`=`, `==` and `!=` are `in` and `notin` of one value)."""
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "exists":
            return self.key in labels
        if self.operator == "!":
            return self.key not in labels
        if self.operator == "in":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values


@dataclass(frozen=True)
class LabelSelector:
    """A `labelSelector` query parameter, in the syntax of apimachinery's `labels.Parse`."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "LabelSelector":
        # Split on the commas between requirements, not those inside `in (a,b)`.
        parts = re.split(r",(?![^()]*\))", text) if text.strip() else []
        return cls(tuple(_requirement(part.strip()) for part in parts))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(requirement.matches(labels) for requirement in self.requirements)


def _requirement(text: str) -> Requirement:
    if match := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", text):
        key, operator, values = match.groups()
        return Requirement(key, operator, frozenset(value.strip() for value in values.split(",")))
    if match := re.fullmatch(r"([^!=\s]+)\s*(==|=|!=)\s*(\S*)", text):
        key, operator, value = match.groups()
        return Requirement(key, "notin" if operator == "!=" else "in", frozenset({value}))
    if text.startswith("!"):
        return Requirement(text[1:].strip(), "!")
    return Requirement(text, "exists")


JOBS = "kubedistill.io/v1alpha1/distillationjobs"

REASONS = {
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def api_error(status: int, *, retry_after: int | None = None, message: str = "") -> aiohttp.web.Response:
    """A Kubernetes `Status` error as the API server sends it (Retry-After in the header and the details)."""
    details = {"retryAfterSeconds": retry_after} if retry_after is not None else {}
    body = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": status,
        "reason": REASONS[status],
        "message": message or f"injected fault: HTTP {status}",
        "details": details,
    }
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return aiohttp.web.json_response(body, status=status, headers=headers)


OPERATOR_AGENTS = ("kopf/", USER_AGENT)


@dataclass(frozen=True)
class Call:
    """A kind of request the operator (kopf or its own client) makes: a verb on a resource."""

    action: Action
    resource: str
    """`group/version/plural`, as in `kmock.resource`."""
    subresource: str | None = None

    def matches(self, request: Request) -> bool:
        return (
            request.headers.get("User-Agent", "").startswith(OPERATOR_AGENTS)
            and request.action == self.action
            and request.resource == kmock.resource(self.resource)
            and request.subresource == self.subresource
        )


async def apply_despite_the_error(server: ApiServer, request: Request) -> None:
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

    async def __call__(self, server: ApiServer, request: Request) -> aiohttp.web.Response | None:
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

    async def __call__(self, server: ApiServer, request: Request) -> aiohttp.web.Response | None:
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

    async def __call__(self, server: ApiServer, request: Request) -> aiohttp.web.Response | None:
        statuses = next((statuses for call, statuses in self.calls.items() if call.matches(request)), None)
        if statuses is None or self.rng.random() >= self.rate:
            return None
        status = self.rng.choice(statuses)
        creating = request.action == Action.CREATE
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
        self.archive: list[Request] = []
        # cel-python takes ~0.3 s a job: the long runs' jobs are valid, and the schema is still checked.
        self.cel_rules = False

    async def _handle(self, request: Request) -> aiohttp.web.StreamResponse:
        try:
            return await super()._handle(request)
        finally:
            self.archive.append(request)
            self._requests.remove(request)

    def served(self) -> list[Request]:
        """Every request so far: those answered, then those still open (watches)."""
        return [*self.archive, *self._requests]


@dataclass(frozen=True)
class OwnerReferencesPermissionEnforcement:
    """kube-apiserver's admission plugin of that name (on by default in OpenShift): setting
    `blockOwnerDeletion` on an ownerReference needs `update` on the owner's `finalizers` subresource.

    As in kubernetes `plugin/pkg/admission/gc/gc_admission.go` (v1.33): each such reference is authorised
    as verb `update`, the owner's resource, subresource `finalizers`; a refusal is a 403 whose message is
    the plugin's. `rules` are the operator's RBAC; requests of other clients pass.
    """

    rules: Sequence[Rule]

    async def __call__(self, server: ApiServer, request: Request) -> aiohttp.web.Response | None:
        agent = request.headers.get("User-Agent", "")
        if request.action != Action.CREATE or not agent.startswith(OPERATOR_AGENTS):
            return None
        if not isinstance(request.data, Mapping) or request.resource is None:
            return None
        for owner in request.data.get("metadata", {}).get("ownerReferences", []):
            if not owner.get("blockOwnerDeletion"):
                continue
            group = owner["apiVersion"].rpartition("/")[0]
            plural = next(
                resource.plural
                for resource, info in server.resources.items()
                if info.kind == owner["kind"] and (resource.group or "") == group
            )
            if not allowed(self.rules, group, f"{plural}/finalizers", "update"):
                name = request.data["metadata"]["name"]
                kind = request.resource.plural + (
                    f".{request.resource.group}" if request.resource.group else ""
                )
                message = (
                    f'{kind} "{name}" is forbidden: cannot set blockOwnerDeletion if an ownerReference '
                    "refers to a resource you can't set finalizers on: , <nil>"
                )
                return api_error(403, message=message)
        return None
