"""The kopf handlers: registration only; what they do is in `reconcile`.

Importing this module registers them in kopf's global registry, so it is imported once, by the runner.
"""

import asyncio
import contextlib
from typing import Any

import kopf

from kubedistill.api.job import GROUP, PLURAL, VERSION
from kubedistill.api.status import Phase
from kubedistill.operator import reconcile
from kubedistill.operator.cluster import connection_info
from kubedistill.operator.context import OperatorContext
from kubedistill.operator.kube import RAY_GROUP, RAY_VERSION, RAYJOBS, TransientApiError
from kubedistill.operator.naming import JOB_LABEL


@kopf.on.login()
async def login(memo: OperatorContext, **_: Any) -> kopf.ConnectionInfo:
    return await connection_info(memo.kube.client.configuration)


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


@kopf.on.event(RAY_GROUP, RAY_VERSION, RAYJOBS, labels={JOB_LABEL: kopf.PRESENT})
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
    key = reconcile.key_of(body)
    period, loop = memo.settings.scrape_period_seconds, asyncio.get_running_loop()
    while True:
        started = loop.time()
        # The API server failing a status patch is counted as an error; the next period tries again.
        with contextlib.suppress(TransientApiError), memo.metrics.reconcile("progress"):
            await reconcile.read_progress(memo, key)
        # One read per period, however long the read took (a busy operator does not fall behind). A plain
        # sleep, not `stopped.wait(period)`: cancelled, it raises CancelledError, where Python 3.11's
        # wait_for may turn a cancellation into a TimeoutError that kopf re-raises when it stops.
        await asyncio.sleep(max(0.0, period - (loop.time() - started)))
