"""The production examples hang together: every Kubernetes object in them is valid, every volume a job
mounts is defined, the download job fetches every model the jobs read, the Kueue queue can admit the
queued job, the Argo CD Applications point at the chart and at valid jobs, and each example places its
roles as its comment says. (tests/api/test_crd.py and tests/operator/test_conformance.py check every
DistillationJob against the model, the CRD and KubeRay's CRD.)"""

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes.utils.quantity import parse_quantity

from kubedistill.api.job import DistillationJob, parse_job
from kubedistill.api.manifest import load_documents
from kubedistill.api.placement import COLOCATED_GROUP
from kubedistill.operator.render import render_rayjob
from kubedistill.operator.settings import RenderSettings
from tests.charts.helm import CHART, run_helm
from tests.operator.manifests import example_jobs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
KUBERNETES_VERSION = "1.30.0"
CUSTOM_GROUPS = ("kubedistill.io/", "kueue.x-k8s.io/", "argoproj.io/")
SETTINGS = RenderSettings("registry.test/kubedistill-runtime:1")


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.relative_to(ROOT)}#{index}", document)
        for path in sorted(EXAMPLES.glob("**/*.yaml"))
        for index, document in enumerate(load_documents(path))
    ]


def _of_kind(kind: str, under: str = "") -> list[dict[str, Any]]:
    return [
        doc for where, doc in _documents() if doc["kind"] == kind and where.startswith(f"examples/{under}")
    ]


def _job(name: str, under: str = "") -> DistillationJob:
    (job,) = [
        job for where, job in example_jobs() if job.name == name and where.startswith(f"examples/{under}")
    ]
    return job


def _groups(job: DistillationJob) -> dict[str, tuple[int, int]]:
    """Worker group -> (pods, GPUs per pod) of the rendered RayJob."""
    groups = render_rayjob(job, SETTINGS)["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return {group["groupName"]: (group["replicas"], int(group["resources"]["GPU"])) for group in groups}


BUILTIN = [(where, doc) for where, doc in _documents() if not doc["apiVersion"].startswith(CUSTOM_GROUPS)]


@pytest.mark.parametrize(("where", "obj"), BUILTIN, ids=[where for where, _ in BUILTIN])
def test_every_kubernetes_object_in_the_examples_is_valid(where: str, obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_every_claim_a_production_job_mounts_is_defined_in_examples_storage() -> None:
    claims = {pvc["metadata"]["name"] for pvc in _of_kind("PersistentVolumeClaim", "storage")}
    mounted = {
        volume["persistentVolumeClaim"]["claimName"]
        for _, job in example_jobs()
        for volume in job.spec.cluster.volumes
        if "persistentVolumeClaim" in volume
    }
    assert mounted and mounted <= claims
    (pvc,) = _of_kind("PersistentVolumeClaim", "storage")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every pod of a job reads and writes it"


def test_the_download_job_fetches_every_model_the_jobs_start_from() -> None:
    (download,) = _of_kind("Job", "storage")
    script = download["spec"]["template"]["spec"]["containers"][0]["args"][0]
    fetched = {match.group(1) for match in re.finditer(r"[\w.-]+/([\w.-]+)", script.split("; do")[0])}
    models = {
        path.removeprefix("/mnt/models/")
        for _, job in example_jobs()
        for path in (job.spec.student.model, job.spec.teacher.model if job.spec.teacher else None)
        if path and path.startswith("/mnt/models/")
    }
    assert models and models <= fetched, models - fetched


def test_the_queued_job_reaches_a_cluster_queue_through_its_namespaces_local_queue() -> None:
    job = _job("qwen3-32b-to-4b-queued")
    (local_queue,) = [
        queue
        for queue in _of_kind("LocalQueue", "kueue")
        if (queue["metadata"]["name"], queue["metadata"]["namespace"])
        == (job.spec.cluster.queue_name, job.metadata.namespace)
    ]
    (cluster_queue,) = [
        queue
        for queue in _of_kind("ClusterQueue", "kueue")
        if queue["metadata"]["name"] == local_queue["spec"]["clusterQueue"]
    ]
    (namespace,) = [
        ns for ns in _of_kind("Namespace", "kueue") if ns["metadata"]["name"] == job.metadata.namespace
    ]
    wanted = cluster_queue["spec"]["namespaceSelector"]["matchLabels"]
    assert wanted.items() <= namespace["metadata"]["labels"].items()
    assert job.spec.cluster.priority_class_name in {
        pc["metadata"]["name"] for pc in _of_kind("PriorityClass", "kueue")
    }


def _pod_sets(rayjob: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """Kueue's pod sets of a RayJob: the head and each worker group, (pods, template)."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [(1, cluster["headGroupSpec"]["template"])] + [
        (group["replicas"], group["template"]) for group in cluster["workerGroupSpecs"]
    ]


def _fits(flavor: dict[str, Any], pod: dict[str, Any]) -> bool:
    """Kueue's flavor check: the pod set tolerates the flavor's taints and selects no other node labels."""
    tolerated = all(
        any(
            t["key"] == taint["key"] and t.get("effect") == taint["effect"]
            for t in pod.get("tolerations", [])
        )
        for taint in flavor.get("spec", {}).get("nodeTaints", [])
    )
    labels = flavor.get("spec", {}).get("nodeLabels", {})
    selected = all(labels.get(key, value) == value for key, value in pod.get("nodeSelector", {}).items())
    return tolerated and selected


def test_the_cluster_queue_admits_the_queued_job_with_the_gpu_pods_on_h100_and_the_head_off_it() -> None:
    job = _job("qwen3-32b-to-4b-queued")
    rayjob = render_rayjob(job, SETTINGS)
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == job.spec.cluster.queue_name
    (cluster_queue,) = _of_kind("ClusterQueue", "kueue")
    (group,) = cluster_queue["spec"]["resourceGroups"]
    flavors = {f["metadata"]["name"]: f for f in _of_kind("ResourceFlavor", "kueue")}
    used: dict[str, dict[str, Decimal]] = {}
    assigned = []
    for pods, template in _pod_sets(rayjob):
        # Kueue tries the group's flavors in order and takes the first that fits.
        name = next(f["name"] for f in group["flavors"] if _fits(flavors[f["name"]], template["spec"]))
        assigned.append(name)
        for container in template["spec"]["containers"]:
            for resource, quantity in container["resources"]["requests"].items():
                assert resource in group["coveredResources"], resource
                totals = used.setdefault(name, {})
                totals[resource] = totals.get(resource, Decimal(0)) + pods * parse_quantity(quantity)
    assert assigned == ["cpu", "h100", "h100"], "head, teacher, student"
    assert used["h100"]["nvidia.com/gpu"] == Decimal(16)
    for flavor in group["flavors"]:
        quota = {item["name"]: parse_quantity(item["nominalQuota"]) for item in flavor["resources"]}
        for resource, amount in used.get(flavor["name"], {}).items():
            assert amount <= quota[resource], (flavor["name"], resource)


def test_the_h20_job_runs_every_role_on_the_same_eight_gpus() -> None:
    job = _job("qwen3-30b-a3b-to-1-7b-onpolicy")
    assert _groups(job) == {COLOCATED_GROUP: (1, 8)}
    assert job.spec.teacher is not None and job.spec.teacher.quantization == "fp8"
    assert job.spec.cluster.node_selector["nvidia.com/gpu.product"] == "NVIDIA-H20"


def test_the_two_node_teacher_spans_two_pods_of_eight_gpus_beside_a_two_node_student() -> None:
    job = _job("qwen3-235b-a22b-to-8b")
    assert _groups(job) == {"teacher": (2, 8), "student": (2, 8)}
    teacher = job.spec.teacher
    assert teacher is not None
    # Tensor parallelism across the nodes: pipeline-parallel SGLang engines return no hidden states.
    assert (teacher.tensor_parallel, teacher.pipeline_parallel, teacher.nodes_per_replica) == (16, 1, 2)


def test_the_infiniband_job_gives_every_worker_an_rdma_device_the_ib_network_and_ipc_lock() -> None:
    job = _job("qwen3-235b-a22b-to-8b-infiniband", "infiniband")
    assert _groups(job) == {"teacher": (2, 8), "student": (2, 8)}, "NCCL crosses nodes in both groups"
    cluster = render_rayjob(job, SETTINGS)["spec"]["rayClusterSpec"]
    for group in cluster["workerGroupSpecs"]:
        template = group["template"]
        (container,) = template["spec"]["containers"]
        assert container["resources"]["limits"]["rdma/ib"] == "1"
        assert template["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "ib-net"
        assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
    (namespace,) = [
        ns for ns in _of_kind("Namespace", "infiniband") if ns["metadata"]["name"] == job.metadata.namespace
    ]
    # IPC_LOCK is in neither the restricted nor the baseline profile.
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_the_h100_job_puts_teacher_and_student_on_a_node_each() -> None:
    assert _groups(_job("qwen3-32b-to-4b", "h100")) == {"teacher": (1, 8), "student": (1, 8)}


def test_the_cross_tokenizer_job_uses_a_cross_tokenizer_algorithm() -> None:
    job = _job("qwen3-8b-to-llama-3-2-1b-dskd")
    assert job.spec.distillation.algorithm in ("dskd", "simpleCtkd")
    assert job.spec.teacher is not None
    assert "Qwen" in job.spec.teacher.model and "Llama" in job.spec.student.model


def _applications() -> dict[str, dict[str, Any]]:
    return {app["metadata"]["name"]: app for app in _of_kind("Application", "gitops")}


def test_the_operator_application_installs_the_chart_with_values_it_accepts(tmp_path: Path) -> None:
    source = _applications()["kubedistill-operator"]["spec"]["source"]
    assert ROOT / source["path"] == CHART
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(source["helm"]["valuesObject"]), encoding="utf-8")
    result = run_helm("template", source["helm"]["releaseName"], str(CHART), f"--values={values}")
    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc}
    assert {"Deployment", "Role", "PodMonitor", "ServiceMonitor"} <= kinds


def test_the_jobs_application_syncs_a_directory_of_valid_jobs_without_pruning_them() -> None:
    app = _applications()["distillation-jobs"]
    directory = ROOT / app["spec"]["source"]["path"]
    manifests = sorted(directory.glob("*.yaml"))
    assert manifests
    for path in manifests:
        for document in load_documents(path):
            parse_job(document)
    assert app["spec"]["syncPolicy"]["automated"]["prune"] is False
    assert app["spec"]["destination"]["namespace"] in _operator_watched_namespaces()


def _operator_watched_namespaces() -> list[str]:
    values = _applications()["kubedistill-operator"]["spec"]["source"]["helm"]["valuesObject"]
    return values["watchNamespaces"]
