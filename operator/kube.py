"""The operator's calls to the Kubernetes API: its children (ConfigMap, RayJob) and its job's status.

Transient failures (HTTP 429 and 5xx, dropped connections) are retried here with client-go's backoff,
waiting at least as long as a Retry-After header asks; what still fails surfaces as `TransientApiError` for
the handler to turn into a kopf retry.
"""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar, cast

import aiohttp
from kubernetes.aio.client import ApiClient, ApiException, CoreV1Api, CustomObjectsApi, V1ConfigMap

# Backoff is re-exported by kubernetes.aio.utils.retry without an __all__ entry.
from kubernetes.aio.utils.retry import Backoff, on_retry_after_error  # pyright: ignore[reportPrivateImportUsage]

from kubedistill.api.job import GROUP, PLURAL, VERSION
from kubedistill.operator.naming import FIELD_MANAGER, is_owned_by

T = TypeVar("T")
KubeObject = dict[str, Any]

RAY_GROUP, RAY_VERSION, RAYJOBS = "ray.io", "v1", "rayjobs"
RAYJOB_API_MISSING = (
    f"the cluster serves no RayJob API ({RAY_GROUP}/{RAY_VERSION} {RAYJOBS}): install KubeRay's CRDs"
)
MERGE_PATCH = "application/merge-patch+json"
DEFAULT_BACKOFF = Backoff(steps=4, duration=0.05, factor=4.0, jitter=0.1)


class TransientApiError(Exception):
    """The API server kept failing (or was unreachable) through every retry."""


class NotOwned(Exception):
    """A child's name is taken by an object this job does not control."""

    def __init__(self, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata", {})
        self.kind, self.name = obj.get("kind", "object"), metadata.get("name", "")
        super().__init__(
            f"{self.kind} {metadata.get('namespace')}/{self.name} exists and is not owned by this job"
        )


class ApiNotServed(Exception):
    """The API server does not serve the child's kind (404 on its create): its CRD is not installed."""


class Outcome(StrEnum):
    CREATED = "created"
    ADOPTED = "adopted"
    """It existed already (a retry, a restart, or a 409) and is ours."""


@dataclass(frozen=True)
class Kube:
    client: ApiClient
    backoff: Backoff = DEFAULT_BACKOFF

    async def create_or_adopt(self, obj: KubeObject, owner_uid: str) -> Outcome:
        """Create `obj`; if its name is taken by an object we own, keep that one (never a duplicate)."""
        namespace = obj["metadata"]["namespace"]
        try:
            await self._retrying(lambda: self._create(namespace, obj))
            return Outcome.CREATED
        except ApiException as error:
            if http_status(error) == 404:
                raise ApiNotServed(f"{obj['apiVersion']} {obj['kind']}") from error
            if http_status(error) != 409:
                raise
        existing = await self._retrying(lambda: self._read(namespace, obj))
        if not is_owned_by(existing, owner_uid):
            raise NotOwned(existing)
        return Outcome.ADOPTED

    async def patch_rayjob_spec(self, namespace: str, name: str, spec_patch: Mapping[str, Any]) -> None:
        api = CustomObjectsApi(self.client)
        await self._retrying(
            lambda: api.patch_namespaced_custom_object(
                RAY_GROUP,
                RAY_VERSION,
                namespace,
                RAYJOBS,
                name,
                {"spec": dict(spec_patch)},
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
            ),
            retriable=is_transient_or_conflict,
        )

    async def serves_rayjobs(self) -> bool:
        """Whether discovery lists KubeRay's RayJob resource (kopf resolves its watches once, at start)."""
        try:
            found = await self._retrying(
                lambda: CustomObjectsApi(self.client).get_api_resources(RAY_GROUP, RAY_VERSION)
            )
        except ApiException as error:
            if http_status(error) == 404:
                return False
            raise
        return any(resource.name == RAYJOBS for resource in found.resources)

    async def read_config_map(self, namespace: str, name: str) -> KubeObject:
        return await self._retrying(lambda: self._read_config_map(namespace, name))

    async def read_job(self, namespace: str, name: str) -> KubeObject | None:
        """The DistillationJob, or None when it is gone."""
        return await self._read_custom_object(GROUP, VERSION, PLURAL, namespace, name)

    async def read_rayjob(self, namespace: str, name: str) -> KubeObject | None:
        """The RayJob, or None when it is gone."""
        return await self._read_custom_object(RAY_GROUP, RAY_VERSION, RAYJOBS, namespace, name)

    async def _read_custom_object(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> KubeObject | None:
        api = CustomObjectsApi(self.client)
        try:
            found = await self._retrying(
                lambda: api.get_namespaced_custom_object(group, version, namespace, plural, name)
            )
            return cast(KubeObject, found)
        except ApiException as error:
            if http_status(error) == 404:
                return None
            raise

    async def patch_job_status(self, namespace: str, name: str, status_patch: Mapping[str, Any]) -> bool:
        """Merge-patch the status subresource; False when the job is gone."""
        api = CustomObjectsApi(self.client)
        try:
            await self._retrying(
                lambda: api.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    {"status": dict(status_patch)},
                    field_manager=FIELD_MANAGER,
                    _content_type=MERGE_PATCH,
                ),
                retriable=is_transient_or_conflict,
            )
        except ApiException as error:
            if http_status(error) == 404:
                return False
            raise
        return True

    async def _create(self, namespace: str, obj: KubeObject) -> object:
        if obj["kind"] == "ConfigMap":
            return await CoreV1Api(self.client).create_namespaced_config_map(
                namespace, cast(V1ConfigMap, V1ConfigMap.from_dict(obj)), field_manager=FIELD_MANAGER
            )
        group, version = obj["apiVersion"].split("/")
        return await CustomObjectsApi(self.client).create_namespaced_custom_object(
            group, version, namespace, _plural(obj["kind"]), obj, field_manager=FIELD_MANAGER
        )

    async def _read(self, namespace: str, obj: KubeObject) -> KubeObject:
        name = obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap":
            return await self._read_config_map(namespace, name)
        group, version = obj["apiVersion"].split("/")
        found = await CustomObjectsApi(self.client).get_namespaced_custom_object(
            group, version, namespace, _plural(obj["kind"]), name
        )
        return cast(KubeObject, found)

    async def _read_config_map(self, namespace: str, name: str) -> KubeObject:
        found = await CoreV1Api(self.client).read_namespaced_config_map(name, namespace)
        return cast(KubeObject, self.client.sanitize_for_serialization(found))  # pyright: ignore[reportUnknownMemberType]

    async def _retrying(
        self, call: Callable[[], Awaitable[T]], retriable: Callable[[Exception], bool] | None = None
    ) -> T:
        retriable = retriable or is_transient
        try:
            return await on_retry_after_error(self.backoff, retriable, call)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise TransientApiError(str(error)) from error
        except ApiException as error:
            if retriable(error):
                raise TransientApiError(f"HTTP {http_status(error)}: {http_reason(error)}") from error
            raise


def http_status(error: ApiException) -> int:
    """The HTTP status of a failed call (kubernetes' ApiException stores it from an unannotated argument)."""
    return cast(int | None, error.status) or 0  # pyright: ignore[reportUnknownMemberType]


def http_reason(error: ApiException) -> str:
    return str(cast(object, error.reason))  # pyright: ignore[reportUnknownMemberType]


def is_transient(error: Exception) -> bool:
    if isinstance(error, ApiException):
        return http_status(error) == 429 or http_status(error) >= 500
    return isinstance(error, aiohttp.ClientError | TimeoutError)


def is_transient_or_conflict(error: Exception) -> bool:
    """For merge patches, which carry no resourceVersion: a 409 means the API server ran out of its own
    retries on a busy object, and sending the same patch again is right (client-go's RetryOnConflict)."""
    return is_transient(error) or (isinstance(error, ApiException) and http_status(error) == 409)


def _plural(kind: str) -> str:
    return {"RayJob": RAYJOBS}[kind]
