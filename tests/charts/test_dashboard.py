"""The Grafana dashboard: valid JSON, shipped for the Grafana sidecar, and every query asks for metrics
that exist: the trainer's (`kubedistill.api.telemetry`) and the operator's
(`kubedistill.operator.metrics`)."""

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from kubedistill.api import telemetry
from kubedistill.api.telemetry import Kind
from kubedistill.operator.metrics import OperatorMetrics
from tests.charts.helm import CHART, template

DASHBOARD_FILE = CHART / "dashboards" / "kubedistill.json"
METRIC_NAME = re.compile(r"\bkubedistill_[a-z0-9_]+\b")
SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def _declared_series() -> set[str]:
    """Every series name Prometheus can hold for the declared metrics (histograms as _bucket/_sum/_count)."""
    series = set()
    for metric in telemetry.ALL:
        if metric.kind == Kind.HISTOGRAM:
            series |= {metric.name + suffix for suffix in SERIES_SUFFIXES["histogram"]}
        else:
            series.add(metric.name)
    for family in OperatorMetrics().registry.collect():
        series |= {family.name + suffix for suffix in SERIES_SUFFIXES[family.type]}
    return series


def _queries(node: Any) -> Iterator[str]:
    """PromQL of panel targets and of templating variables."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query") and isinstance(value, str):
                yield value
            else:
                yield from _queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _queries(item)


def _used_series() -> set[str]:
    return {name for query in _queries(_dashboard()) for name in METRIC_NAME.findall(query)}


def test_the_dashboard_is_grafana_json_with_panels_and_a_datasource_variable() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "kubedistill"
    assert dashboard["panels"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"namespace", "job"} <= set(variables)


def test_every_query_uses_only_declared_metrics() -> None:
    used = _used_series()
    assert used, "no queries found"
    assert used <= _declared_series(), used - _declared_series()


def test_a_misspelt_metric_would_be_caught() -> None:
    assert "kubedistill_los" not in _declared_series()
    assert "kubedistill_step_seconds_bucket" in _declared_series()


@pytest.mark.parametrize(
    "series",
    [
        telemetry.LOSS.name,
        telemetry.KD_LOSS.name,
        telemetry.LAST_STEP_SECONDS.name,
        telemetry.STEP_SECONDS.name + "_bucket",
        telemetry.TOKENS_PER_SECOND.name,
        "kubedistill_operator_reconciles_total",
        "kubedistill_operator_errors_total",
    ],
)
def test_the_dashboard_shows(series: str) -> None:
    assert series in _used_series()


def test_job_panels_filter_by_the_namespace_and_job_variables_on_the_trainers_labels() -> None:
    trainer_series = {m.name for m in telemetry.ALL}
    for query in _queries(_dashboard()["panels"]):
        names = {name.removesuffix("_bucket") for name in METRIC_NAME.findall(query)}
        if names & trainer_series:
            assert f'{telemetry.NAMESPACE_LABEL}=~"$namespace"' in query, query
            assert f'{telemetry.JOB_LABEL}=~"$job"' in query, query


LABEL_USE = re.compile(r"\b(?:by \(([^)]*)\)|([a-z_]+)=~|label_values\([^,]+, ([a-z_]+)\)|\{\{([a-z_]+)\}\})")


def test_every_label_a_job_query_uses_is_one_the_trainer_exports() -> None:
    trainer_series = {m.name for m in telemetry.ALL}
    for query in _queries(_dashboard()):
        names = {name.removesuffix("_bucket") for name in METRIC_NAME.findall(query)}
        if not names & trainer_series:
            continue
        used = {
            label.strip()
            for match in LABEL_USE.findall(query)
            for group in match
            for label in group.split(",")
            if label.strip()
        }
        assert used <= {*telemetry.LABELS, "le"}, query


def test_the_configmap_carries_the_file_and_the_grafana_sidecar_label() -> None:
    config_map = template().one("ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["kubedistill.json"]) == _dashboard()


def test_the_dashboard_can_be_left_out_or_put_in_grafanas_namespace() -> None:
    assert not template(settings=("dashboard.enabled=false",)).of_kind("ConfigMap")
    moved = template(settings=("dashboard.namespace=monitoring",)).one("ConfigMap")
    assert moved["metadata"]["namespace"] == "monitoring"
