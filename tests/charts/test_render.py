"""Every object the chart renders is valid Kubernetes, strictly (an unknown field fails), and named within
the 63-character limit however long the release name."""

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.charts.helm import CI_VALUES, template

KUBERNETES_VERSION = "1.30.0"
CUSTOM_GROUPS = ("monitoring.coreos.com/", "kopf.dev/")
"""Kinds from other projects' CRDs, which kubernetes-validate does not know: tests/charts/test_monitors.py
and test_rbac.py check their shape."""

CASES = [(), *((path,) for path in CI_VALUES)]
IDS = ["defaults", *(path.name for path in CI_VALUES)]


def _builtin(objects: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [obj for obj in objects if not obj["apiVersion"].startswith(CUSTOM_GROUPS)]


@pytest.mark.parametrize("values", CASES, ids=IDS)
def test_every_rendered_object_is_valid_kubernetes(values: tuple[Path, ...]) -> None:
    objects = _builtin(template(values).objects)
    assert {"Deployment", "ServiceAccount", "Service"} <= {obj["kind"] for obj in objects}
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_a_misspelt_field_would_be_caught() -> None:
    deployment = template().one("Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("values", CASES, ids=IDS)
def test_names_and_label_values_fit_63_characters_for_a_long_release_name(values: tuple[Path, ...]) -> None:
    release = "a-release-name-as-long-as-helm-allows-fifty-three-chr"
    assert len(release) == 53
    for obj in template(values, release=release).objects:
        metadata = obj["metadata"]
        assert len(metadata["name"]) <= 63, metadata["name"]
        assert not metadata["name"].endswith("-"), metadata["name"]
        for value in metadata.get("labels", {}).values():
            assert len(value) <= 63, value


def test_suffixed_names_keep_their_suffix_when_cut() -> None:
    release = "x" * 53
    names = {obj["kind"]: obj["metadata"]["name"] for obj in template(release=release).objects}
    full_name = f"{release}-kubedisti"
    assert names["Deployment"] == full_name
    assert names["Service"] == f"{full_name[:55]}-metrics"
    assert names["ConfigMap"] == f"{full_name[:53]}-dashboard"
    assert {len(name) for name in names.values()} == {63}


def test_namespaced_objects_go_to_the_release_namespace_unless_watched_namespaces_need_them() -> None:
    for obj in template().objects:
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == "kubedistill-system", obj["kind"]
