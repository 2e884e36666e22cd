"""What the operator's behaviour depends on besides the DistillationJob itself.

`RenderSettings` is all that rendering needs; `OperatorSettings` adds the reconciler's timings. Both are
plain values: only `settings_from_env` reads the environment, and only when the command starts.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import version

IMAGE_ENV = "KUBEDISTILL_RUNTIME_IMAGE"
SCRAPE_PERIOD_ENV = "KUBEDISTILL_SCRAPE_PERIOD_SECONDS"
SCRAPE_TIMEOUT_ENV = "KUBEDISTILL_SCRAPE_TIMEOUT_SECONDS"
METRICS_URL_ENV = "KUBEDISTILL_METRICS_URL_TEMPLATE"
PEERING_LIFETIME_ENV = "KUBEDISTILL_PEERING_LIFETIME_SECONDS"
RAYJOB_API_CHECK_ENV = "KUBEDISTILL_RAYJOB_API_CHECK_SECONDS"

DEFAULT_METRICS_URL_TEMPLATE = "http://{cluster}-head-svc.{namespace}.svc:{port}/metrics"
"""KubeRay names a RayCluster's head Service `<cluster>-head-svc` (GenerateHeadServiceName); the RayJob's
`status.rayClusterName` gives the cluster. Placeholders: cluster, namespace, job, port."""


def default_runtime_image() -> str:
    return f"ghcr.io/kubedistill/runtime:{version('kubedistill')}"


@dataclass(frozen=True)
class RenderSettings:
    default_image: str
    """Image of the Ray pods when the job's spec.cluster.image is unset."""


@dataclass(frozen=True)
class OperatorSettings:
    render: RenderSettings = field(default_factory=lambda: RenderSettings(default_runtime_image()))
    scrape_period_seconds: float = 15.0
    """How often a running job's trainer metrics are read into its status."""
    scrape_timeout_seconds: float = 5.0
    metrics_url_template: str = DEFAULT_METRICS_URL_TEMPLATE
    retry_delay_seconds: float = 10.0
    """Delay before kopf retries a handler after the API server failed it."""
    peering_lifetime_seconds: int = 60
    """How long a replica that stopped sending keep-alives (killed, its node lost) still counts as active
    in the peering: the bound on a standby replica's takeover (kopf's `peering.lifetime`, whole seconds).
    A replica that stops gracefully leaves the peering at once."""
    rayjob_api_check_seconds: float = 10.0
    """While the cluster serves no RayJob API (KubeRay not installed yet): how often the operator looks for
    it, and how often a waiting job retries."""


def settings_from_env(environ: Mapping[str, str]) -> OperatorSettings:
    defaults = OperatorSettings()
    return OperatorSettings(
        render=RenderSettings(environ.get(IMAGE_ENV) or defaults.render.default_image),
        scrape_period_seconds=float(environ.get(SCRAPE_PERIOD_ENV) or defaults.scrape_period_seconds),
        scrape_timeout_seconds=float(environ.get(SCRAPE_TIMEOUT_ENV) or defaults.scrape_timeout_seconds),
        metrics_url_template=environ.get(METRICS_URL_ENV) or defaults.metrics_url_template,
        peering_lifetime_seconds=int(environ.get(PEERING_LIFETIME_ENV) or defaults.peering_lifetime_seconds),
        rayjob_api_check_seconds=float(
            environ.get(RAYJOB_API_CHECK_ENV) or defaults.rayjob_api_check_seconds
        ),
    )
