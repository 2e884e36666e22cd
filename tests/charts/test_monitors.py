"""The ServiceMonitor scrapes the operator's metrics Service, and the PodMonitor scrapes the trainer's
`/metrics` on every job's Ray head pod and nothing else. Both are off by default.

The PodMonitor is checked against pods the operator really renders (`kubedistill.operator.render`),
labelled as KubeRay labels their pods (`tests.operator.kuberay.pod_labels`)."""

from pathlib import Path
from typing import Any

import pytest

from kubedistill.api import telemetry
from kubedistill.api.job import parse_job
from kubedistill.api.telemetry import DEFAULT_METRICS_PORT
from kubedistill.operator.render import render_rayjob
from kubedistill.operator.settings import RenderSettings
from tests.charts.helm import CHART, NAMESPACE, template
from tests.operator import kuberay

CI = CHART / "ci"


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        if operator == "Exists" and key not in labels:
            return False
        if operator == "In" and labels.get(key) not in expression["values"]:
            return False
    return True


def _ray_pods() -> dict[str, dict[str, Any]]:
    """Head and worker pod templates of a rendered job, labelled as KubeRay labels their pods."""
    job = parse_job(
        {
            "apiVersion": "kubedistill.io/v1alpha1",
            "kind": "DistillationJob",
            "metadata": {"name": "kubedistill", "namespace": "ml-team-a"},
            "spec": {
                "teacher": {"model": "/models/teacher"},
                "student": {"model": "/models/student"},
                "data": {"train": {"path": "/data/train.jsonl"}},
            },
        },
        check_plugin_names=False,
    )
    cluster = render_rayjob(job, RenderSettings("registry.test/runtime:1"))["spec"]["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster["workerGroupSpecs"]:
        pods[group["groupName"]] = group["template"]
    for group, pod in pods.items():
        node_type = "head" if group == "head" else "worker"
        pod["metadata"]["labels"] = kuberay.pod_labels(pod["metadata"]["labels"], node_type, "kd-x1", group)
    return pods


def test_no_monitor_by_default() -> None:
    kinds = {obj["kind"] for obj in template().objects}
    assert not kinds & {"ServiceMonitor", "PodMonitor"}


def test_the_service_monitor_selects_the_metrics_service_and_its_port() -> None:
    rendered = template((CI / "servicemonitor-values.yaml",))
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert _matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "15s")


def test_the_metrics_service_reaches_the_operators_metrics_port() -> None:
    rendered = template()
    service = rendered.one("Service")
    pod = rendered.one("Deployment")["spec"]["template"]
    assert _matches({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    (container,) = pod["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"] if p["containerPort"] == 9090}


def test_the_pod_monitor_selects_only_the_ray_head_of_each_job() -> None:
    monitor = template((CI / "podmonitor-values.yaml",)).one("PodMonitor")
    pods = _ray_pods()
    assert {"head", "teacher", "student"} <= set(pods)
    selected = {
        name for name, pod in pods.items() if _matches(monitor["spec"]["selector"], pod["metadata"]["labels"])
    }
    assert selected == {"head"}


def test_the_pod_monitor_scrapes_the_trainers_port() -> None:
    monitor = template((CI / "podmonitor-values.yaml",)).one("PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (head,) = _ray_pods()["head"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in head["ports"]}
    assert ports[endpoint["port"]] == DEFAULT_METRICS_PORT
    assert endpoint["path"] == "/metrics"


# What prometheus-operator adds to every target of a ServiceMonitor or PodMonitor (its relabelling: namespace,
# container, pod, service, endpoint, job; Prometheus itself adds instance).
TARGET_LABELS = {"namespace", "container", "pod", "service", "endpoint", "job", "instance"}


def test_the_trainers_labels_survive_the_scrape_without_honor_labels() -> None:
    monitor = template((CI / "podmonitor-values.yaml",)).one("PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert not endpoint.get("honorLabels", False), "Prometheus' own target labels are kept"
    assert not set(telemetry.LABELS) & TARGET_LABELS


def test_the_operators_own_pod_is_not_scraped_as_a_job() -> None:
    rendered = template((CI / "podmonitor-values.yaml",))
    operator_pod = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not _matches(rendered.one("PodMonitor")["spec"]["selector"], operator_pod)


@pytest.mark.parametrize(
    ("values", "namespace_selector"),
    [
        ((CI / "podmonitor-values.yaml",), {"matchNames": ["ml-team-a", "ml-team-b"]}),
        (("jobMetrics.podMonitor.enabled=true",), {"any": True}),
    ],
    ids=["namespaced", "cluster"],
)
def test_the_pod_monitor_looks_in_the_watched_namespaces(
    values: tuple[Path | str, ...], namespace_selector: dict[str, Any]
) -> None:
    files = tuple(v for v in values if isinstance(v, Path))
    settings = tuple(v for v in values if isinstance(v, str))
    monitor = template(files, settings).one("PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == namespace_selector
    assert monitor["metadata"]["namespace"] == NAMESPACE
