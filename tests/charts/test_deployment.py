"""The operator's Deployment: flags the real `kubedistill operator` command accepts, the settings the
operator reads from its environment, a liveness probe on kopf's endpoint, a readiness probe on the
operator's, and a locked-down container."""

import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command

from kubedistill.cli import app
from kubedistill.operator.runner import READINESS_PATH
from kubedistill.operator.settings import (
    IMAGE_ENV,
    METRICS_URL_ENV,
    SCRAPE_PERIOD_ENV,
    SCRAPE_TIMEOUT_ENV,
    default_runtime_image,
    settings_from_env,
)
from tests.charts.helm import CHART, ROOT, template

CI = CHART / "ci"


def _container(values: tuple[Path, ...] = (), settings: tuple[str, ...] = ()) -> dict[str, Any]:
    (container,) = template(values, settings).one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _parsed_args(container: dict[str, Any]) -> dict[str, Any]:
    """The container's args as the image's entrypoint (`kubedistill operator`) parses them."""
    operator = get_command(app).commands["operator"]  # type: ignore[attr-defined]
    return operator.make_context("operator", list(container["args"])).params


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


@pytest.mark.parametrize(
    ("values", "namespaces", "peering"),
    [
        ((), [], None),
        ((CI / "namespaced-values.yaml",), ["ml-team-a", "ml-team-b"], None),
        ((CI / "peering-values.yaml",), [], "kubedistill"),
        ((CI / "namespaced-peering-values.yaml",), ["ml-team-a"], "kubedistill"),
    ],
    ids=["cluster", "namespaced", "peering", "namespaced-peering"],
)
def test_the_operator_flags_parse_and_select_what_the_values_say(
    values: tuple[Path, ...], namespaces: list[str], peering: str | None
) -> None:
    params = _parsed_args(_container(values))
    assert list(params["namespace"] or []) == namespaces
    assert params["all_namespaces"] is (not namespaces)
    assert params["peering"] == peering
    assert params["standalone"] is (peering is None)
    assert (params["liveness_port"], params["metrics_port"]) == (8080, 9090)


def test_the_liveness_probe_asks_kopfs_health_endpoint_on_the_liveness_port() -> None:
    container = _container(settings=("operator.livenessPort=8181", "metrics.port=9191"))
    params = _parsed_args(container)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == params["liveness_port"] == 8181
    assert ports["metrics"] == params["metrics_port"] == 9191


def test_the_readiness_probe_asks_the_operators_readiness_path_on_the_metrics_port() -> None:
    container = _container(settings=("metrics.port=9191",))
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == READINESS_PATH
    assert ports[probe["port"]] == _parsed_args(container)["metrics_port"] == 9191


def test_the_default_runtime_image_is_the_operators_own_default() -> None:
    env = _env(_container())
    assert env[IMAGE_ENV] == default_runtime_image()
    assert _container()["image"] == f"ghcr.io/kubedistill/operator:{version('kubedistill')}"


def test_custom_images_and_a_runtime_digest_reach_the_operator() -> None:
    container = _container((CI / "custom-image-values.yaml",))
    assert container["image"] == "registry.example.com/ml/kubedistill-operator:0.1.0-rc1"
    assert container["imagePullPolicy"] == "Always"
    digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    assert _env(container)[IMAGE_ENV] == f"registry.example.com/ml/kubedistill-runtime@{digest}"


def test_the_operator_reads_the_settings_the_values_give(tmp_path: Path) -> None:
    url = "http://{cluster}-head-svc.{namespace}.svc.cluster.local:{port}/metrics"
    operator = {"scrapePeriodSeconds": 30, "scrapeTimeoutSeconds": 2.5, "metricsUrlTemplate": url}
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"operator": operator}), encoding="utf-8")
    settings = settings_from_env(_env(_container((values,))))
    assert settings.scrape_period_seconds == 30.0
    assert settings.scrape_timeout_seconds == 2.5
    assert settings.metrics_url_template == url


def test_replicas_in_a_peering_take_over_after_the_lifetime_the_values_give() -> None:
    settings = settings_from_env(
        _env(_container((CI / "peering-values.yaml",), ("peering.lifetimeSeconds=20",)))
    )
    assert settings.peering_lifetime_seconds == 20


def test_without_a_url_template_the_operator_keeps_its_default() -> None:
    env = _env(_container())
    assert METRICS_URL_ENV not in env
    assert {SCRAPE_PERIOD_ENV, SCRAPE_TIMEOUT_ENV} <= set(env)


def test_the_chart_and_the_images_carry_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert chart["appVersion"] == project["version"]
    assert default_runtime_image().endswith(f":{chart['appVersion']}")


@pytest.mark.parametrize(
    ("values", "strategy"),
    [((), "Recreate"), ((CI / "peering-values.yaml",), None)],
    ids=["standalone", "peering"],
)
def test_a_standalone_operator_is_replaced_only_after_it_stopped(
    values: tuple[Path, ...], strategy: str | None
) -> None:
    spec = template(values).one("Deployment")["spec"]
    assert spec.get("strategy", {}).get("type") == strategy


def test_the_pod_runs_as_non_root_with_the_runtime_default_seccomp_profile() -> None:
    pod = template().one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == template().one("ServiceAccount")["metadata"]["name"]


def test_the_container_is_read_only_without_capabilities_or_privilege_escalation() -> None:
    context = _container()["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["runAsNonRoot"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_only_writable_path_is_a_bounded_tmp() -> None:
    deployment = template().one("Deployment")["spec"]["template"]["spec"]
    assert _container()["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert deployment["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]


def test_the_container_has_resource_requests_and_a_memory_limit() -> None:
    resources = _container()["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert "memory" in resources["limits"]
