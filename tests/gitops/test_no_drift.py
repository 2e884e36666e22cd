"""What git holds is what the cluster keeps: GitOps tools (Argo CD, Flux) see no drift.

- Rendering is a function of the job and the settings: the same objects every time, in every process.
- Defaults live in the pydantic spec only: the CRD sets none (the API server stores the manifest as
  written), and a manifest that spells the defaults out renders exactly like one that leaves them out.
- The operator never writes a job's spec: only its status, its finalizer and kopf's annotations.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubedistill.api.job import DistillationJob, parse_job
from kubedistill.operator.render import render
from kubedistill.operator.settings import RenderSettings
from tests.operator.harness import (
    JOBS,
    NAMESPACE,
    Cluster,
    eventually,
    job_manifest,
    running_operator,
)
from tests.operator.manifests import example_jobs

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = RenderSettings("registry.test/kubedistill-runtime:1")
EXAMPLES = example_jobs()
IDS = [name for name, _ in EXAMPLES]


@pytest.mark.parametrize(("name", "job"), EXAMPLES, ids=IDS)
def test_rendering_twice_gives_identical_objects(name: str, job: DistillationJob) -> None:
    first, second = render(job, SETTINGS), render(job, SETTINGS)
    assert first == second
    assert yaml.safe_dump_all(first, sort_keys=False) == yaml.safe_dump_all(second, sort_keys=False)


def test_kubedistill_render_prints_the_same_yaml_in_every_process() -> None:
    """Different hash seeds reorder sets and dicts built from them: the output must not depend on it."""
    manifest = ROOT / "examples" / "gitops" / "jobs" / "qwen3-32b-to-4b.yaml"
    outputs = set()
    for seed in ("1", "2"):
        environment = {
            **os.environ,
            "PYTHONHASHSEED": seed,
            "KUBEDISTILL_RUNTIME_IMAGE": SETTINGS.default_image,
        }
        result = subprocess.run(
            [str(Path(sys.executable).parent / "kubedistill"), "render", str(manifest)],
            capture_output=True,
            text=True,
            env=environment,
            check=True,
            timeout=120,
        )
        outputs.add(result.stdout)
    (output,) = outputs
    kinds = [document["kind"] for document in yaml.safe_load_all(output)]
    assert kinds == ["ConfigMap", "RayJob"]


def _with_explicit_defaults(job: DistillationJob) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": job.name}
    if job.metadata.namespace:
        metadata["namespace"] = job.metadata.namespace
    return {
        "apiVersion": job.api_version,
        "kind": job.kind,
        "metadata": metadata,
        "spec": job.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


@pytest.mark.parametrize(("name", "job"), EXAMPLES, ids=IDS)
def test_spelling_out_the_defaults_renders_the_same_objects(name: str, job: DistillationJob) -> None:
    explicit = _with_explicit_defaults(job)
    assert explicit["spec"]["distillation"]["jsdBeta"] == 0.5, "the defaults are spelt out"
    assert render(parse_job(explicit, check_plugin_names=False), SETTINGS) == render(job, SETTINGS)


def test_the_crd_sets_no_defaults_so_the_api_server_stores_what_git_holds() -> None:
    def defaults(node: Any, path: str) -> list[str]:
        if isinstance(node, dict):
            found = [path] if "default" in node else []
            return found + [hit for key, child in node.items() for hit in defaults(child, f"{path}.{key}")]
        if isinstance(node, list):
            return [hit for i, child in enumerate(node) for hit in defaults(child, f"{path}[{i}]")]
        return []

    crd = yaml.safe_load((ROOT / "crds" / "kubedistill.io_distillationjobs.yaml").read_text(encoding="utf-8"))
    (version,) = crd["spec"]["versions"]
    assert defaults(version["schema"]["openAPIV3Schema"], "$") == []


def _spec_writes(cluster: Cluster) -> list[Any]:
    """Requests by the operator (kopf or its client) that change a DistillationJob outside its status."""
    writes = []
    for request in cluster.requests():
        agent = request.headers.get("User-Agent", "")
        resource = request.resource
        if not agent.startswith(("kopf/", "kubedistill-operator")) or resource is None:
            continue
        if resource.plural != "distillationjobs" or request.subresource == "status":
            continue
        if request.method not in ("GET",) and _touches_spec(request.data):
            writes.append((request.method, request.url, request.data))
    return writes


def _touches_spec(body: Any) -> bool:
    if isinstance(body, dict):
        return "spec" in body
    if isinstance(body, list):  # a JSON patch
        return any(str(op.get("path", "")).startswith("/spec") for op in body)
    return body is not None


async def test_the_operator_never_writes_a_jobs_spec(cluster: Cluster) -> None:
    manifest = job_manifest()
    async with running_operator(cluster.server):
        await cluster.create_job(manifest)
        await eventually(lambda: cluster.condition("Created")["status"] == "True", what="created")
        await cluster.set_rayjob_status(
            jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName="demo-raycluster-x7k2p"
        )
        await eventually(lambda: cluster.status()["phase"] == "Running", what="running")
        await eventually(lambda: cluster.condition("ProgressUnknown"), what="a read of the metrics")
        await cluster.edit_spec({"suspend": True})
        await eventually(lambda: cluster.rayjob()["spec"]["suspend"] is True, what="suspend applied")
        await cluster.edit_spec({"suspend": False})
        await eventually(lambda: cluster.rayjob()["spec"]["suspend"] is False, what="resumed")
        await cluster.set_rayjob_status(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
        await eventually(lambda: cluster.status()["phase"] == "Succeeded", what="succeeded")

    writes = [
        r for r in cluster.requests() if r.resource is not None and r.resource.plural == "distillationjobs"
    ]
    assert any(r.method == "PATCH" and r.subresource is None for r in writes), "kopf's own patches not seen"
    assert _spec_writes(cluster) == []
    stored = cluster.stored(JOBS, "demo", NAMESPACE)
    assert stored is not None
    assert stored["spec"] == {**manifest["spec"], "suspend": False}
