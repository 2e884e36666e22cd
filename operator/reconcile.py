"""What each handler does, in terms of the pure parts (parse, render, status functions) and the API.

kopf-specific signalling stays here too (retry or give up, events), so that `handlers.py` is only the
registration of these functions with kopf.
"""

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import kopf
import yaml
from kubernetes.aio.client import ApiException

from kubedistill.api.job import GROUP, PLURAL, DistillationJob, InvalidJob, parse_job
from kubedistill.api.status import TERMINAL_PHASES, ConditionType, Reason
from kubedistill.api.telemetry import DEFAULT_METRICS_PORT
from kubedistill.operator.conditions import condition_of
from kubedistill.operator.context import OperatorContext
from kubedistill.operator.kube import (
    RAYJOB_API_MISSING,
    ApiNotServed,
    NotOwned,
    TransientApiError,
    http_reason,
    http_status,
)
from kubedistill.operator.lifecycle import (
    api_missing_status,
    created_status,
    forbidden_status,
    invalid_edit_status,
    invalid_spec_status,
    is_created,
    name_conflict_status,
    spec_change_status,
)
from kubedistill.operator.mirror import deleted_rayjob_status, mirrored_status
from kubedistill.operator.naming import JOB_LABEL, is_owned_by
from kubedistill.operator.progress import parse_progress, with_metrics_unreachable, with_progress
from kubedistill.operator.render import CONFIG_FILE, render
from kubedistill.operator.spec_changes import classify
from kubedistill.operator.status_writer import JobKey, StatusChange
from kubedistill.operator.storage import misplaced_paths, storage_status

Body = Mapping[str, Any]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_of(body: Body) -> JobKey:
    return body["metadata"]["namespace"], body["metadata"]["name"]


async def create_children(ctx: OperatorContext, body: Body, logger: kopf.Logger) -> None:
    """Create (or adopt) the ConfigMap and the RayJob of a new or resumed job."""
    key = key_of(body)
    ctx.statuses.observe(key, body)
    status = ctx.statuses.status(key) or {}
    if status.get("phase") in TERMINAL_PHASES:
        return
    if is_created(status) and not await _rayjob_exists(ctx, key[0], status["rayJobName"]):
        # Deleted while the operator was down: the same end as a deletion it watches (`mirror_rayjob`),
        # never a silent second run of a job that may have trained for hours.
        gone = status["rayJobName"]
        await _change_or_retry(ctx, key, lambda s, g: deleted_rayjob_status(s, gone, generation=g, now=now()))
        return
    job = await _parse_or_fail(ctx, key, body)
    children = render(job, ctx.settings.render)
    child = children[0]
    """The child being created, which a refusal below names."""
    try:
        for child in children:
            outcome = await ctx.kube.create_or_adopt(child, body["metadata"]["uid"])
            logger.info(f"{child['kind']} {child['metadata']['name']}: {outcome}")
    except NotOwned as conflict:
        message = f"{conflict}; delete or rename it"
        created = condition_of(ctx.statuses.status(key) or {}, ConditionType.CREATED) or {}
        await _change_or_retry(
            ctx, key, lambda s, g: name_conflict_status(s, message, generation=g, now=now())
        )
        if created.get("reason") != Reason.NAME_CONFLICT:  # one event per conflict, not one per retry
            _warn(body, Reason.NAME_CONFLICT, message)
        raise kopf.TemporaryError(message, delay=ctx.settings.retry_delay_seconds) from conflict
    except TransientApiError as error:
        raise kopf.TemporaryError(str(error), delay=ctx.settings.retry_delay_seconds) from error
    except ApiNotServed as missing:
        message = f"{RAYJOB_API_MISSING}; the job waits and is created when it is"
        created = condition_of(ctx.statuses.status(key) or {}, ConditionType.CREATED) or {}
        await _change_or_retry(ctx, key, lambda s, g: api_missing_status(s, message, generation=g, now=now()))
        if created.get("reason") != Reason.RAY_JOB_API_MISSING:
            _warn(body, Reason.RAY_JOB_API_MISSING, message)
        raise kopf.TemporaryError(str(missing), delay=ctx.settings.rayjob_api_check_seconds) from missing
    except ApiException as error:
        if http_status(error) != 403:
            raise
        message = _forbidden_message(child, error)
        await _change_or_retry(ctx, key, lambda s, g: forbidden_status(s, message, generation=g, now=now()))
        _warn(body, Reason.FORBIDDEN, message)
        raise kopf.PermanentError(message) from None
    config_map, rayjob = children
    names = rayjob["metadata"]["name"], config_map["metadata"]["name"]
    misplaced = misplaced_paths(job, rayjob)
    warned = condition_of(ctx.statuses.status(key) or {}, ConditionType.EPHEMERAL_STORAGE) is not None
    await _change_or_retry(
        ctx,
        key,
        lambda s, g: storage_status(
            created_status(s, *names, generation=g, now=now()), misplaced, generation=g, now=now()
        ),
    )
    if misplaced and not warned:  # one event per job, not one per resume
        message = "; ".join(str(problem) for problem in misplaced)
        _warn(body, Reason.PATH_NOT_ON_VOLUME, message)


async def apply_spec_change(ctx: OperatorContext, body: Body) -> None:
    """Apply suspend/ttlSecondsAfterFinished to the RayJob; report any other edit as ignored."""
    key = key_of(body)
    ctx.statuses.observe(key, body)
    status = ctx.statuses.status(key) or {}
    if status.get("phase") in TERMINAL_PHASES or not is_created(status):
        return
    namespace = key[0]
    try:
        wanted = _parse(body)
    except InvalidJob as invalid:
        problems = invalid.problems
        await _change_or_retry(
            ctx, key, lambda s, g: invalid_edit_status(s, problems, generation=g, now=now())
        )
        _warn(body, Reason.INVALID_SPEC, str(invalid).replace("\n", "; "))
        return
    try:
        # The children's names as recorded when they were created, never derived again from the job's.
        config_map = await ctx.kube.read_config_map(namespace, status["configMapName"])
        deployed = parse_job(yaml.safe_load(config_map["data"][CONFIG_FILE]), check_plugin_names=False)
        change = classify(deployed.spec, wanted.spec)
        await ctx.kube.patch_rayjob_spec(namespace, status["rayJobName"], change.rayjob_patch)
    except TransientApiError as error:
        raise kopf.TemporaryError(str(error), delay=ctx.settings.retry_delay_seconds) from error
    ignored = change.ignored
    await _change_or_retry(ctx, key, lambda s, g: spec_change_status(s, ignored, generation=g, now=now()))
    if ignored:
        message = f"not applied to the running job: {', '.join(ignored)}"
        _warn(body, ConditionType.SPEC_CHANGE_IGNORED, message)


async def mirror_rayjob(ctx: OperatorContext, event_type: str | None, rayjob: Body) -> None:
    """Copy a child RayJob's state into its DistillationJob's status."""
    namespace = rayjob["metadata"]["namespace"]
    job_name = rayjob["metadata"]["labels"][JOB_LABEL]
    key = (namespace, job_name)
    if ctx.statuses.status(key) is None:
        job = await ctx.kube.read_job(namespace, job_name)
        if job is None:
            return
        ctx.statuses.observe(key, job)
    owner_uid = ctx.statuses.uid(key)
    if owner_uid is None or not is_owned_by(rayjob, owner_uid):
        return
    ray_status: Mapping[str, Any] = rayjob.get("status") or {}
    cluster: str | None = ray_status.get("rayClusterName")
    if cluster:
        ctx.ray_clusters[key] = cluster
    if event_type == "DELETED":
        name = rayjob["metadata"]["name"]
        await ctx.statuses.change(key, lambda s, g: deleted_rayjob_status(s, name, generation=g, now=now()))
    else:
        await ctx.statuses.change(key, lambda s, g: mirrored_status(s, rayjob, generation=g, now=now()))


async def read_progress(ctx: OperatorContext, key: JobKey) -> None:
    """One read of the trainer's /metrics into the status; failures become ProgressUnknown, not errors."""
    cluster = ctx.ray_clusters.get(key)
    if cluster is None:
        return
    namespace, name = key
    url = ctx.settings.metrics_url_template.format(
        cluster=cluster, namespace=namespace, job=name, port=DEFAULT_METRICS_PORT
    )
    timeout = aiohttp.ClientTimeout(total=ctx.settings.scrape_timeout_seconds)
    try:
        async with ctx.http.get(url, timeout=timeout) as response:
            response.raise_for_status()
            fields = parse_progress(await response.text(), namespace=namespace, job=name)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        ctx.metrics.scrape_failures.inc()
        reason = str(error) or type(error).__name__
        await ctx.statuses.change(
            key, lambda s, g: with_metrics_unreachable(s, reason, url=url, generation=g, now=now())
        )
        return
    await ctx.statuses.change(key, lambda s, g: with_progress(s, fields, url=url, generation=g, now=now()))


def forget(ctx: OperatorContext, key: JobKey) -> None:
    ctx.statuses.forget(key)
    ctx.ray_clusters.pop(key, None)


async def _parse_or_fail(ctx: OperatorContext, key: JobKey, body: Body) -> DistillationJob:
    """The validated job; an invalid one (it slipped past the CRD's schema) fails for good."""
    try:
        return _parse(body)
    except InvalidJob as invalid:
        problems = invalid.problems
        await _change_or_retry(
            ctx, key, lambda s, g: invalid_spec_status(s, problems, generation=g, now=now())
        )
        _warn(body, Reason.INVALID_SPEC, str(invalid).replace("\n", "; "))
        raise kopf.PermanentError(f"invalid spec: {invalid}") from None


def _warn(body: Body, reason: str, message: str) -> None:
    """An Event on the job. kopf.warn takes any mapping (kopf 1.45.2 `_core/engines/posting.py:149` walks
    `objs` with `dicts.walk`), though its annotation names kopf's own Body class."""
    kopf.warn(cast(kopf.Body, dict(body)), reason=reason, message=message)


def _forbidden_message(child: Body, error: ApiException) -> str:
    """Which permission the operator's service account lacks, in RBAC terms, and the server's words."""
    group, _, _version = child["apiVersion"].rpartition("/")
    metadata = child["metadata"]
    server_says = _server_message(error)
    if "blockOwnerDeletion" in server_says:
        # OwnerReferencesPermissionEnforcement (kubernetes plugin/pkg/admission/gc/gc_admission.go).
        missing = _permission("update", GROUP, f"{PLURAL}/finalizers")
    else:
        missing = _permission("create", group, _resource_of(child))
    return (
        f"the operator may not create {child['kind']} {metadata['namespace']}/{metadata['name']}: its "
        f"service account needs {missing} (the chart's RBAC grants it; check a replaced or edited Role). "
        f"The API server said: {server_says}"
    )


def _server_message(error: ApiException) -> str:
    body = cast(str | None, error.body)  # pyright: ignore[reportUnknownMemberType]  # unannotated in kubernetes
    try:
        return str(json.loads(body or "{}").get("message") or http_reason(error))
    except ValueError:
        return http_reason(error)


def _permission(verb: str, group: str, resource: str) -> str:
    return f"{verb} on {resource} (API group {group or 'core'})"


def _resource_of(child: Body) -> str:
    return {"ConfigMap": "configmaps", "RayJob": "rayjobs"}[child["kind"]]


async def _rayjob_exists(ctx: OperatorContext, namespace: str, name: str) -> bool:
    try:
        return await ctx.kube.read_rayjob(namespace, name) is not None
    except TransientApiError as error:
        raise kopf.TemporaryError(str(error), delay=ctx.settings.retry_delay_seconds) from error


def _parse(body: Body) -> DistillationJob:
    # The status is the operator's; only what users write is validated.
    manifest = {key: value for key, value in body.items() if key != "status"}
    return parse_job(manifest, check_plugin_names=False)


async def _change_or_retry(ctx: OperatorContext, key: JobKey, change: StatusChange) -> None:
    try:
        await ctx.statuses.change(key, change)
    except TransientApiError as error:
        raise kopf.TemporaryError(str(error), delay=ctx.settings.retry_delay_seconds) from error
