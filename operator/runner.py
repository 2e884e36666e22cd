"""Running the operator: kopf configured for this project, with the shared context as its memo."""

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import kopf
from aiohttp.abc import AbstractResolver
from kubernetes.aio.client import ApiClient
from prometheus_client import start_http_server

from kubedistill.operator.cluster import connect
from kubedistill.operator.context import OperatorContext
from kubedistill.operator.kube import Kube
from kubedistill.operator.metrics import OperatorMetrics
from kubedistill.operator.progress import scrape_session
from kubedistill.operator.settings import OperatorSettings
from kubedistill.operator.status_writer import StatusWriter

ANNOTATION_PREFIX = "kubedistill.io"
USER_AGENT = "kubedistill-operator"


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


def kopf_settings() -> kopf.OperatorSettings:
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
    `resolver`, to the system's name resolution of the trainers' hosts."""
    from kubedistill.operator import handlers  # noqa: F401  # registers the handlers, once per process

    client = client if client is not None else await connect()
    client.user_agent = USER_AGENT
    metrics = metrics if metrics is not None else OperatorMetrics()
    metrics_server = None
    if options.metrics_port is not None:
        metrics_server, _ = start_http_server(options.metrics_port, registry=metrics.registry)
    kube = Kube(client)
    try:
        async with scrape_session(resolver) as http:
            context = OperatorContext(settings, kube, metrics, StatusWriter(kube, metrics), http)
            await kopf.operator(
                settings=kopf_settings(),
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
        await client.close()
        if metrics_server is not None:
            metrics_server.shutdown()
