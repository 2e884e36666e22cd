"""The kopf handlers: registration only; what they do is in `reconcile`.

Importing this module registers them in kopf's global registry, so it is imported once, by the runner.
"""

import asyncio
import contextlib
import dataclasses
from typing import Any

import kopf

from kubedistill.api.job import GROUP, PLURAL, VERSION
from kubedistill.api.status import Phase
from kubedistill.operator import reconcile
from kubedistill.operator.cluster import connection_info
from kubedistill.operator.context import OperatorContext
from kubedistill.operator.kube import RAY_GROUP, RAY_VERSION, RAYJOBS, TransientApiError


@kopf.on.login()
async def login(memo: OperatorContext, **_: Any) -> kopf.ConnectionInfo:
    return await connection_info(memo.kube.client.configuration)  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
async def create_children(body: kopf.Body, memo: OperatorContext, logger: kopf.Logger, **_: Any) -> None:
    with memo.metrics.reconcile("create"):
        await reconcile.create_children(memo, body, logger)


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def apply_spec_change(body: kopf.Body, memo: OperatorContext, **_: Any) -> None:
    with memo.metrics.reconcile("update"):
        await reconcile.apply_spec_change(memo, body)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def track_job(event: kopf.RawEvent, body: kopf.Body, memo: OperatorContext, **_: Any) -> None:
    # Async like every handler here: kopf runs sync ones in a thread pool, and the status writer's state
    # belongs to the event loop. Children go with the job through their ownerReferences; the operator only
    # forgets it.
    key = reconcile.key_of(body)
    if event["type"] == "DELETED":
        reconcile.forget(memo, key)
    else:
        memo.statuses.observe(key, body)


@kopf.on.event(RAY_GROUP, RAY_VERSION, RAYJOBS)  # only those labelled JOB_LABEL: `runner.kopf_settings`
async def mirror_rayjob(event: kopf.RawEvent, body: kopf.Body, memo: OperatorContext, **_: Any) -> None:
    # kopf never retries an event handler: a RayJob change whose status patch failed would be lost until the
    # RayJob changes again (for a running job, when it ends). Retry here; kopf queues the newer events.
    while True:
        with contextlib.suppress(TransientApiError), memo.metrics.reconcile("rayjob"):
            await reconcile.mirror_rayjob(memo, event["type"], body)
            return
        await asyncio.sleep(memo.settings.retry_delay_seconds)


CANCELLATION_TIMEOUT_SECONDS = 5.0
"""Cancel the progress reader right away when its job stops running; it holds nothing to clean up."""


def _running(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") == Phase.RUNNING


@kopf.daemon(GROUP, VERSION, PLURAL, when=_running, cancellation_timeout=CANCELLATION_TIMEOUT_SECONDS)
async def read_progress(body: kopf.Body, memo: OperatorContext, **_: Any) -> None:
    """Only while the job runs: kopf cancels it when the phase changes (and starts it again on Running)."""
    key, uid = reconcile.key_of(body), body["metadata"]["uid"]
    period, loop = memo.settings.scrape_period_seconds, asyncio.get_running_loop()
    while True:
        started = loop.time()
        # The API server failing a status patch is counted as an error; the next period tries again.
        with contextlib.suppress(TransientApiError), memo.metrics.reconcile("progress"):
            await reconcile.read_progress(memo, key)
        if memo.statuses.uid(key) != uid:
            return  # the job is gone (no finalizer held it, so kopf does not stop this daemon for it)
        # One read per period, however long the read took (a busy operator does not fall behind). A plain
        # sleep, not `stopped.wait(period)`: cancelled, it raises CancelledError, where Python 3.11's
        # wait_for may turn a cancellation into a TimeoutError that kopf re-raises when it stops.
        await asyncio.sleep(max(0.0, period - (loop.time() - started)))


def _without_finalizer(handler_fn: Any) -> None:
    """Let a daemon run without kopf's finalizer on its object.

    kopf gives every daemon `requires_finalizer=True` (kopf 1.45.2 `on.py:715`) and then blocks deletion
    of a matching object until the daemon has stopped (`_core/reactor/processing.py:284-305`): with the
    operator uninstalled, a running job could never be deleted. This daemon holds nothing to clean up, so
    it does not need the finalizer: kopf then adds none and removes one left by an earlier version
    (`processing.py:303`). There is no public switch for it; the handler is replaced in kopf's registry.
    """
    spawning = kopf.get_default_registry()._spawning  # pyright: ignore[reportPrivateUsage]
    spawning._handlers = [  # pyright: ignore[reportPrivateUsage]
        dataclasses.replace(handler, requires_finalizer=False) if handler.fn is handler_fn else handler
        for handler in spawning._handlers  # pyright: ignore[reportPrivateUsage]
    ]


_without_finalizer(read_progress)
