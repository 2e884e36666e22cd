"""Running the operator: kopf configured for this project, with the shared context as its memo."""

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import kopf
from aiohttp.abc import AbstractResolver
from kubernetes.aio.client import ApiClient
from prometheus_client import CollectorRegistry, make_wsgi_app  # pyright: ignore[reportUnknownVariableType]
from prometheus_client.exposition import ThreadingWSGIServer

from kubedistill.api.status import Reason
from kubedistill.operator.cluster import connect
from kubedistill.operator.context import OperatorContext
from kubedistill.operator.kube import RAY_GROUP, RAYJOB_API_MISSING, RAYJOBS, Kube, TransientApiError
from kubedistill.operator.metrics import OperatorMetrics
from kubedistill.operator.naming import JOB_LABEL
from kubedistill.operator.progress import scrape_session
from kubedistill.operator.settings import OperatorSettings
from kubedistill.operator.status_writer import StatusWriter

logger = logging.getLogger(__name__)

ANNOTATION_PREFIX = "kubedistill.io"
USER_AGENT = "kubedistill-operator"
PRIORITY_RANGE = 2**31
"""Priorities are drawn from [1, 2**31): two replicas draw the same one about once in two billion starts."""


@dataclass(frozen=True)
class RunOptions:
    namespaces: Sequence[str] = ()
    """Watch these namespaces; empty means every namespace."""
    liveness_port: int | None = None
    metrics_port: int | None = None
    peering: str | None = None
    """A KopfPeering (or ClusterKopfPeering) name: only one operator of the peering is active at a time."""
    standalone: bool = False
    """No peering at all; neither flag lets kopf use the `default` peering if its CRD is installed."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def kopf_settings(operator: OperatorSettings) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # The CRD's status schema is structural, so the API server would prune kopf's default `status.kopf`
    # progress records; annotations survive.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/operator"
    # The watched resources are fixed and namespaces are named exactly: no need to list and watch
    # CustomResourceDefinitions or Namespaces (nor the RBAC to do so).
    settings.scanning.disabled = True
    # Only the operator's own RayJobs, selected by the API server (kopf 1.45.2 sends these as the list's
    # and watch's `labelSelector`, `_cogs/clients/watching.py:263-271`; a handler's `labels=` filter is
    # applied by kopf after every RayJob in the cluster has been received).
    settings.watching.label_selectors[RAY_GROUP, RAYJOBS] = JOB_LABEL
    # kopf pauses every peer that sees a live peer of the same priority, itself included (kopf 1.45.2
    # `_core/engines/peering.py:128-146`), so replicas started alike would all stand still. A priority
    # drawn at start makes exactly one active: the highest; the others pause until its keep-alives stop.
    settings.peering.priority = random.SystemRandom().randrange(1, PRIORITY_RANGE)
    settings.peering.lifetime = operator.peering_lifetime_seconds
    return settings


async def run_operator(
    options: RunOptions,
    settings: OperatorSettings,
    *,
    client: ApiClient | None = None,
    metrics: OperatorMetrics | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    resolver: AbstractResolver | None = None,
) -> None:
    """Run until `stop_flag` is set (or a signal arrives). `client` defaults to the cluster's credentials;
    `resolver`, to the system's name resolution of the trainers' hosts.

    Started before KubeRay's CRDs, it runs without RayJobs and exits (SystemExit) once they are served:
    kopf resolves the resources it watches once, at start, when scanning is off (kopf 1.45.2
    `_core/reactor/observation.py:114-142`), and Kubernetes restarts the container.
    """
    from kubedistill.operator import handlers  # noqa: F401  # pyright: ignore[reportUnusedImport]  # registers the handlers

    client = client if client is not None else await connect()
    client.user_agent = USER_AGENT
    metrics = metrics if metrics is not None else OperatorMetrics()
    unready: list[str] = []
    metrics_server = None
    if options.metrics_port is not None:
        metrics_server = serve_metrics(options.metrics_port, metrics.registry, unready)
    kube = Kube(client)
    appeared = None
    try:
        if not await kube.serves_rayjobs():
            unready.append(RAYJOB_API_MISSING)
            logger.error(
                f"{RAYJOB_API_MISSING}; DistillationJobs wait (condition Created=False, reason "
                f"{Reason.RAY_JOB_API_MISSING}), and the operator restarts once RayJobs are served"
            )
            appeared = asyncio.create_task(
                _until_rayjobs_served(kube, settings.rayjob_api_check_seconds, stop_flag)
            )
            stop_kopf = asyncio.Event()
            appeared.add_done_callback(lambda _: stop_kopf.set())
            stop_flag = stop_kopf  # the caller's flag still stops the waiting, and so kopf
        async with scrape_session(resolver) as http:
            context = OperatorContext(settings, kube, metrics, StatusWriter(kube, metrics), http)
            await kopf.operator(
                settings=kopf_settings(settings),
                clusterwide=options.clusterwide,
                namespaces=list(options.namespaces),
                standalone=options.standalone or None,
                peering_name=options.peering,
                liveness_endpoint=(
                    f"http://0.0.0.0:{options.liveness_port}/healthz" if options.liveness_port else None
                ),
                memo=context,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
    finally:
        if appeared is not None:
            appeared.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await appeared
        await client.close()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    if appeared is not None and not appeared.cancelled() and appeared.result():
        raise SystemExit(RAYJOB_API_APPEARED)


READINESS_PATH = "/readyz"


def serve_metrics(port: int, registry: CollectorRegistry, unready: Sequence[str]) -> WSGIServer:
    """The operator's metrics, and at `READINESS_PATH` its readiness: 503 naming what it waits for while
    `unready` says anything (kopf's own endpoint is a liveness probe: it answers 200 whatever the state)."""
    metrics: Callable[..., Iterable[bytes]] = make_wsgi_app(registry)  # pyright: ignore[reportUnknownVariableType]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != READINESS_PATH:
            return metrics(environ, start_response)
        status = "503 Service Unavailable" if unready else "200 OK"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [("; ".join(unready) or "ready").encode() + b"\n"]

    server = make_server("0.0.0.0", port, app, ThreadingWSGIServer, handler_class=_QuietRequestHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


class _QuietRequestHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # `format`: the base class's parameter name
        """Probes and scrapes every few seconds: not worth a log line each."""


RAYJOB_API_APPEARED = (
    "kubedistill operator: the RayJob API is served now; exiting so that Kubernetes restarts the operator "
    "and it watches RayJobs"
)
STOP_POLL_SECONDS = 0.1


async def _until_rayjobs_served(
    kube: Kube, period: float, stop_flag: asyncio.Event | threading.Event | None
) -> bool:
    """True once the cluster serves RayJobs; False if `stop_flag` is set first."""
    loop = asyncio.get_running_loop()
    next_check = loop.time() + period
    while stop_flag is None or not stop_flag.is_set():
        await asyncio.sleep(STOP_POLL_SECONDS)
        if loop.time() >= next_check:
            next_check = loop.time() + period
            with contextlib.suppress(TransientApiError):
                if await kube.serves_rayjobs():
                    return True
    return False
