"""values.yaml documents and values.schema.json types every value; bad values fail before anything is
rendered, with a message naming the key to fix."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.charts.helm import CHART, ROOT, run_helm

VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def _resolve(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    name = ref.removeprefix("#/definitions/")
    return _resolve(schema["definitions"][name], schema)


def _chart_keys(
    mapping: yaml.MappingNode, schema_node: dict[str, Any], schema: dict[str, Any], path: str = ""
) -> Iterator[tuple[str, int, dict[str, Any] | None]]:
    """Each key of values.yaml that is a chart value (not a key inside a free-form default, such as
    resources.requests.cpu): its dotted path, its line, and its schema (None where it has none)."""
    properties = schema_node.get("properties", {})
    for key_node, value_node in mapping.value:
        key = key_node.value
        key_path = f"{path}.{key}" if path else key
        key_schema = _resolve(properties[key], schema) if key in properties else None
        yield key_path, key_node.start_mark.line, key_schema
        if key_schema and "properties" in key_schema and isinstance(value_node, yaml.MappingNode):
            yield from _chart_keys(value_node, key_schema, schema, key_path)


def _values_keys() -> list[tuple[str, int, dict[str, Any] | None]]:
    schema = _schema()
    root = yaml.compose(VALUES.read_text(encoding="utf-8"))
    assert isinstance(root, yaml.MappingNode)
    return list(_chart_keys(root, schema, schema))


def _comment_above(lines: list[str], line: int) -> list[str]:
    comment = []
    index = line - 1
    while index >= 0 and lines[index].strip().startswith("#"):
        comment.insert(0, lines[index].strip())
        index -= 1
    return comment


@pytest.mark.parametrize(("key", "line", "schema"), _values_keys(), ids=[k for k, _, _ in _values_keys()])
def test_every_value_has_a_doc_comment_and_a_schema_type(key: str, line: int, schema: dict | None) -> None:
    lines = VALUES.read_text(encoding="utf-8").splitlines()
    comment = _comment_above(lines, line)
    assert comment and comment[0].startswith("# -- "), f"{key} (line {line + 1}) has no `# --` comment"
    assert schema is not None, f"{key} is not in values.schema.json"
    assert "type" in schema, f"{key} has no type in values.schema.json"


def test_the_values_file_is_valid_for_its_own_schema() -> None:
    jsonschema.validate(yaml.safe_load(VALUES.read_text(encoding="utf-8")), _schema())


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"rbac": {"scope": "both"}}, "/rbac/scope"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"replicaCount": "2"}, "/replicaCount"),
        ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "/metrics/serviceMonitor/enabled"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"operator": {"livenessPort": 0}}, "/operator/livenessPort"),
        ({"operator": {"scrapePeriodSeconds": 0}}, "/operator/scrapePeriodSeconds"),
        ({"operator": {"metricsUrlTemplate": "head-svc:8080"}}, "/operator/metricsUrlTemplate"),
        ({"image": {"runtime": {"tag": "a:b"}}}, "/image/runtime/tag"),
        ({"image": {"operator": {"pullPolicy": "Sometimes"}}}, "/image/operator/pullPolicy"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"watchNamespaces": ["a", "a"]}, "/watchNamespaces"),
        ({"peering": {"name": "Not A Name"}}, "/peering/name"),
        ({"jobMetrics": {"podMonitor": {"interval": "30"}}}, "/jobMetrics/podMonitor/interval"),
        ({"dashboard": {"labels": {"grafana_dashboard": 1}}}, "/dashboard/labels/grafana_dashboard"),
        ({"rbac": {"scop": "cluster"}}, "'scop'"),
        ({"replicas": 2}, "'replicas'"),
        ({"rbac": {"scope": "cluster"}, "watchNamespaces": ["a"]}, "watchNamespaces: only used with"),
        ({"replicaCount": 2}, "replicaCount: 2 replicas need peering.name"),
        ({"metrics": {"port": 8080}}, "metrics.port: 8080 is also operator.livenessPort"),
        ({"operator": {"scrapeTimeoutSeconds": 15}}, "operator.scrapeTimeoutSeconds: must be less than"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_values_fail_naming_the_key(values: dict[str, Any], named: str, tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values), encoding="utf-8")
    result = run_helm("template", "kd", str(CHART), f"--values={values_file}")
    assert result.returncode != 0, "rendered although the values are bad"
    assert named in result.stderr, result.stderr


def test_the_charts_crd_is_the_generated_one() -> None:
    top_level = ROOT / "crds" / "kubedistill.io_distillationjobs.yaml"
    in_chart = CHART / "crds" / top_level.name
    assert in_chart.read_bytes() == top_level.read_bytes(), "stale chart CRD: run `make crds`"
    assert sorted(path.name for path in (CHART / "crds").iterdir()) == [top_level.name]
