"""What every handler shares: kopf passes it to them as `memo`."""

from dataclasses import dataclass, field

import aiohttp

from kubedistill.operator.kube import Kube
from kubedistill.operator.metrics import OperatorMetrics
from kubedistill.operator.settings import OperatorSettings
from kubedistill.operator.status_writer import JobKey, StatusWriter


@dataclass(frozen=True)
class OperatorContext:
    settings: OperatorSettings
    kube: Kube
    metrics: OperatorMetrics
    statuses: StatusWriter
    http: aiohttp.ClientSession
    """For the trainers' /metrics."""
    ray_clusters: dict[JobKey, str] = field(default_factory=dict[JobKey, str])
    """Each job's Ray cluster, from its RayJob's status.rayClusterName: the host of its metrics."""
