"""Every rendered RayJob is valid for KubeRay's own CRD schema, every ConfigMap for Kubernetes'.

The API server prunes fields a schema does not know instead of rejecting them, so the check is stricter
than the server: an unknown field anywhere (a typo that would silently vanish) fails here.
"""

import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubedistill.api.job import DistillationJob, parse_job
from kubedistill.operator.render import CONFIG_FILE, render
from kubedistill.operator.settings import RenderSettings
from tests.operator.manifests import GOLDEN_IMAGE, example_jobs, golden_cases, golden_job

CRDS = Path(__file__).resolve().parent / "kuberay_crds"
KUBERNETES_VERSION = "1.33.0"

JOBS = example_jobs() + [(f"golden/{case.name}", golden_job(case)) for case in golden_cases()]


@functools.cache
def rayjob_schema() -> dict[str, Any]:
    with (CRDS / "ray.io_rayjobs.yaml").open(encoding="utf-8") as stream:
        crd = yaml.load(stream, Loader=yaml.CSafeLoader)
    (v1,) = (version for version in crd["spec"]["versions"] if version["name"] == "v1")
    return _closed(v1["schema"]["openAPIV3Schema"])


def _closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever it lists properties and keeps no unknowns."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    keeps_unknown = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and not keeps_unknown:
        closed["additionalProperties"] = False
    return closed


def _render(job: DistillationJob) -> tuple[dict[str, Any], dict[str, Any]]:
    config_map, rayjob = render(job, RenderSettings(GOLDEN_IMAGE))
    return config_map, rayjob


def test_the_examples_are_found() -> None:
    assert any(name.startswith("examples/") for name, _ in JOBS)


@pytest.mark.parametrize(("name", "job"), JOBS, ids=[name for name, _ in JOBS])
def test_the_rayjob_is_valid_for_kuberays_crd(name: str, job: DistillationJob) -> None:
    _, rayjob = _render(job)
    errors = sorted(jsonschema.Draft4Validator(rayjob_schema()).iter_errors(rayjob), key=str)
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(("name", "job"), JOBS, ids=[name for name, _ in JOBS])
def test_the_rayjob_passes_kuberays_own_checks(name: str, job: DistillationJob) -> None:
    """What KubeRay's validation.go rejects beyond the schema."""
    _, rayjob = _render(job)
    spec = rayjob["spec"]
    assert len(rayjob["metadata"]["name"]) <= 47
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", rayjob["metadata"]["name"]), "a DNS-1035 label"
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        start_params = group.get("rayStartParams", {})
        if group.get("resources"):
            assert not {"num-cpus", "num-gpus", "memory", "resources"} & set(start_params)
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


@pytest.mark.parametrize(("name", "job"), JOBS, ids=[name for name, _ in JOBS])
def test_the_configmap_is_valid_kubernetes_and_holds_the_same_job(name: str, job: DistillationJob) -> None:
    config_map, _ = _render(job)
    kubernetes_validate.validate(config_map, KUBERNETES_VERSION, strict=True)
    assert parse_job(yaml.safe_load(config_map["data"][CONFIG_FILE])).spec == job.spec


def test_a_misspelt_field_is_caught_although_the_api_server_would_prune_it() -> None:
    _, rayjob = _render(JOBS[0][1])
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParam"] = {}
    assert list(jsonschema.Draft4Validator(rayjob_schema()).iter_errors(rayjob))
