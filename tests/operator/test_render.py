"""Rendering, as plain table tests: which groups, how many GPUs, which labels and settings where."""

import importlib.util
import re
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from kubedistill.api import parse_job
from kubedistill.api.job import DistillationJob
from kubedistill.operator.pods import TRAINER_METRICS_PORT_NAME, multiply_quantity
from kubedistill.operator.render import render
from kubedistill.operator.settings import RenderSettings
from tests.operator import kuberay

ROOT = Path(__file__).resolve().parents[2]

DEFAULT_IMAGE = "registry.test/runtime:default"
BASE: dict[str, Any] = {
    "teacher": {"model": "t"},
    "student": {"model": "s"},
    "data": {"train": {"path": "/data/train.jsonl"}},
}


def job(metadata: dict[str, Any] | None = None, **spec: Any) -> DistillationJob:
    """The base spec with these top-level fields replaced (None removes one; sft has no teacher)."""
    merged = {key: value for key, value in {**BASE, **spec}.items() if value is not None}
    if merged.get("mode") == "sft":
        merged.pop("teacher")
    return parse_job(
        {
            "apiVersion": "kubedistill.io/v1alpha1",
            "kind": "DistillationJob",
            "metadata": metadata or {"name": "demo", "namespace": "ml", "uid": "uid-1"},
            "spec": merged,
        },
        check_plugin_names=False,
    )


def rendered(job_: DistillationJob) -> tuple[dict[str, Any], dict[str, Any]]:
    config_map, rayjob = render(job_, RenderSettings(DEFAULT_IMAGE))
    return config_map, rayjob


def groups(job_: DistillationJob) -> dict[str, tuple[int, str, dict[str, str]]]:
    """groupName -> (pods, GPUs per pod, Ray resources)."""
    _, rayjob = rendered(job_)
    out = {}
    for group in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        out[group["groupName"]] = (group["replicas"], limits["nvidia.com/gpu"], group["resources"])
    return out


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {},
            {
                "teacher": (1, "1", {"GPU": "1", "kubedistill_teacher": "1"}),
                "student": (1, "1", {"GPU": "1", "kubedistill_student": "1"}),
            },
        ),
        (
            {
                "teacher": {"model": "t", "replicas": 2, "gpusPerReplica": 16, "nodesPerReplica": 2},
                "student": {"model": "s", "replicas": 16},
                "training": {"globalBatchSize": 128},
            },
            {
                "teacher": (4, "8", {"GPU": "8", "kubedistill_teacher": "8"}),
                "student": (2, "8", {"GPU": "8", "kubedistill_student": "8"}),
            },
        ),
        (
            {"student": {"model": "s", "replicas": 4}, "training": {"globalBatchSize": 128}},
            {
                "teacher": (1, "1", {"GPU": "1", "kubedistill_teacher": "1"}),
                "student": (1, "4", {"GPU": "4", "kubedistill_student": "4"}),
            },
        ),
        (
            {"mode": "sft"},
            {"student": (1, "1", {"GPU": "1", "kubedistill_student": "1"})},
        ),
        (
            {"mode": "selfDistillation", "teacher": None},
            {
                "teacher": (1, "1", {"GPU": "1", "kubedistill_teacher": "1"}),
                "student": (1, "1", {"GPU": "1", "kubedistill_student": "1"}),
            },
        ),
        (
            {
                "mode": "onPolicy",
                "rollout": {"engines": 3, "tensorParallel": 2, "batchSize": 128},
                "data": {"train": {"path": "/p.jsonl", "promptKey": "prompt"}},
            },
            {
                "teacher": (1, "1", {"GPU": "1", "kubedistill_teacher": "1"}),
                "student": (1, "1", {"GPU": "1", "kubedistill_student": "1"}),
                "rollout": (3, "2", {"GPU": "2", "kubedistill_rollout": "2"}),
            },
        ),
        (
            {
                "mode": "selfDistillation",
                "teacher": None,
                "rollout": {"engines": 2, "batchSize": 128},
                "distillation": {"teacherEmaDecay": 0.99},
            },
            {
                "teacher": (1, "1", {"GPU": "1", "kubedistill_teacher": "1"}),
                "student": (1, "1", {"GPU": "1", "kubedistill_student": "1"}),
                "rollout": (2, "1", {"GPU": "1", "kubedistill_rollout": "1"}),
            },
        ),
        (
            {
                "teacher": {"model": "t", "replicas": 2, "gpusPerReplica": 8},
                "student": {"model": "s", "replicas": 16},
                "cluster": {"colocate": True},
            },
            {"colocated": (2, "8", {"GPU": "8", "kubedistill_teacher": "8", "kubedistill_student": "8"})},
        ),
        (
            {"mode": "sft", "student": {"model": "s", "replicas": 2}, "cluster": {"colocate": True}},
            {"colocated": (1, "2", {"GPU": "2", "kubedistill_student": "2"})},
        ),
        (
            {
                "teacher": None,
                "teachers": [
                    {"model": "a", "tensorParallel": 4, "gpusPerReplica": 4, "weight": 3},
                    {"model": "b", "replicas": 2},
                ],
            },
            {
                "teacher-0": (1, "4", {"GPU": "4", "kubedistill_teacher": "4"}),
                "teacher-1": (2, "1", {"GPU": "1", "kubedistill_teacher": "1"}),
                "student": (1, "1", {"GPU": "1", "kubedistill_student": "1"}),
            },
        ),
        (
            {
                "teacher": None,
                "teachers": [
                    {"model": "a", "backend": "sglang", "tensorParallel": 2, "gpusPerReplica": 2},
                    {"model": "b", "replicas": 2, "stepsPerWake": 4},
                ],
                "student": {"model": "s", "replicas": 2},
                "cluster": {"colocate": True},
            },
            {
                "colocated": (
                    1,
                    "2",
                    {
                        "GPU": "2",
                        "kubedistill_teacher_0": "2",
                        "kubedistill_teacher_1": "2",
                        "kubedistill_student": "2",
                    },
                )
            },
        ),
    ],
    ids=[
        "defaults",
        "multi-node-teacher-and-two-student-nodes",
        "student-on-part-of-a-node",
        "sft-has-no-teacher",
        "self-distillation-runs-a-default-teacher",
        "onpolicy-adds-rollout-engines",
        "on-policy-self-distillation-adds-rollout-engines",
        "colocated-hosts-every-role-on-the-student-pods",
        "colocated-sft",
        "several-teachers-each-its-own-group",
        "several-colocated-teachers-each-its-own-units-on-the-student-pods",
    ],
)
def test_worker_groups_per_role(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    assert groups(job(**spec)) == expected


def test_worker_pods_get_cpu_and_memory_per_gpu_and_the_gpu_resource_named_by_the_cluster() -> None:
    _, rayjob = rendered(
        job(
            student={"model": "s", "replicas": 4},
            training={"globalBatchSize": 128},
            cluster={"gpuResource": "amd.com/gpu", "worker": {"cpuPerGpu": "500m", "memoryPerGpu": "60Gi"}},
        )
    )
    student = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]
    resources = student["template"]["spec"]["containers"][0]["resources"]
    assert (
        resources["requests"]
        == resources["limits"]
        == {"cpu": "2000m", "memory": "240Gi", "amd.com/gpu": "4"}
    )


def test_the_head_runs_the_trainer_without_gpus_and_serves_its_metrics() -> None:
    _, rayjob = rendered(job(cluster={"head": {"cpu": "6", "memory": "48Gi"}}))
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    container = head["template"]["spec"]["containers"][0]
    assert head["resources"] == {"GPU": "0"}
    assert container["resources"]["limits"] == {"cpu": "6", "memory": "48Gi"}
    assert {"name": TRAINER_METRICS_PORT_NAME, "containerPort": 8090} in container["ports"]
    assert {"name": "KUBEDISTILL_METRICS_PORT", "value": "8090"} in container["env"]


@pytest.mark.parametrize(
    ("spec", "has_suspend", "queue_label"),
    [
        ({}, False, None),
        ({"suspend": True}, True, None),
        ({"cluster": {"queueName": "team-a"}}, None, "team-a"),
        ({"suspend": True, "cluster": {"queueName": "team-a"}}, None, "team-a"),
    ],
    ids=["runs", "suspended", "queued", "queued-leaves-suspend-to-kueue"],
)
def test_suspend_and_the_kueue_queue(
    spec: dict[str, Any], has_suspend: bool | None, queue_label: str | None
) -> None:
    _, rayjob = rendered(job(**spec))
    assert rayjob["spec"].get("suspend") is has_suspend
    assert rayjob["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == queue_label


def test_job_level_settings_reach_the_rayjob() -> None:
    _, rayjob = rendered(job(backoffLimit=5, activeDeadlineSeconds=3600, ttlSecondsAfterFinished=60))
    spec = rayjob["spec"]
    assert spec["entrypoint"] == "kubedistill run /etc/kubedistill/job.yaml"
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (
        5,
        3600,
        60,
    )
    assert spec["shutdownAfterJobFinishes"] is True


def test_every_object_and_pod_template_carries_the_labels_and_pods_keep_kuberays_name() -> None:
    ours = {
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/managed-by": "kubedistill",
        "kubedistill.io/job": "demo",
    }
    config_map, rayjob = rendered(job())
    for labels in (config_map["metadata"]["labels"], rayjob["metadata"]["labels"]):
        assert (ours | {"app.kubernetes.io/name": "kubedistill"}).items() <= labels.items()
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        assert template["metadata"]["labels"] == ours, "KubeRay names its pods `kuberay`"


@pytest.mark.parametrize(
    ("metadata", "owner_uid"),
    [({"name": "demo", "namespace": "ml", "uid": "uid-1"}, "uid-1"), ({"name": "demo"}, None)],
    ids=["from-the-cluster", "from-a-file"],
)
def test_owner_references_need_the_jobs_uid(metadata: dict[str, str], owner_uid: str | None) -> None:
    for obj in rendered(job(metadata)):
        references = obj["metadata"].get("ownerReferences")
        if owner_uid is None:
            assert references is None
        else:
            assert references == [
                {
                    "apiVersion": "kubedistill.io/v1alpha1",
                    "kind": "DistillationJob",
                    "name": "demo",
                    "uid": owner_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]


def test_every_pod_gets_the_cluster_settings_the_manifest_and_shared_memory_and_workers_the_gpu_pool() -> (
    None
):
    cluster = {
        "image": "registry.example.com/runtime:1",
        "nodeSelector": {"pool": "h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "priorityClassName": "high",
        "serviceAccountName": "distill",
        "shmSize": "16Gi",
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
    }
    _, rayjob = rendered(job(cluster=cluster))
    spec = rayjob["spec"]["rayClusterSpec"]
    workers = [g["template"] for g in spec["workerGroupSpecs"]]
    for template in [spec["headGroupSpec"]["template"], *workers]:
        pod = template["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "registry.example.com/runtime:1"
        if template in workers:
            assert (pod["nodeSelector"], pod["tolerations"]) == ({"pool": "h100"}, cluster["tolerations"])
        assert (pod["priorityClassName"], pod["serviceAccountName"]) == ("high", "distill")
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
        assert {"name": "kubedistill-job", "configMap": {"name": "demo-spec"}} in pod["volumes"]
        assert cluster["volumes"][0] in pod["volumes"]
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert {"/dev/shm", "/etc/kubedistill", "/data"} <= mounts
        env = {var["name"]: var for var in container["env"]}
        assert env["KUBEDISTILL_JOB_NAME"]["value"] == "demo"
        assert env["KUBEDISTILL_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        assert env["HF_HUB_OFFLINE"]["value"] == "1"


def test_the_image_defaults_to_the_operators() -> None:
    _, rayjob = rendered(job())
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == DEFAULT_IMAGE


def test_the_configmap_holds_the_validated_job_without_status_or_server_fields() -> None:
    config_map, _ = rendered(job({"name": "demo", "namespace": "ml", "uid": "u", "resourceVersion": "7"}))
    assert config_map["metadata"]["name"] == "demo-spec"
    text = config_map["data"]["job.yaml"]
    assert "uid" not in text and "resourceVersion" not in text and "status" not in text
    assert "kdRatio: 0.5" in text  # defaults are written out


def test_rendered_objects_share_nothing_with_the_job() -> None:
    job_ = job(cluster={"volumes": [{"name": "data", "emptyDir": {}}]})
    _, rayjob = rendered(job_)
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"][-1]["name"] = "changed"
    assert job_.spec.cluster.volumes[0]["name"] == "data"


@pytest.mark.parametrize(
    ("quantity", "factor", "product"),
    [
        ("8", 4, "32"),
        ("64Gi", 8, "512Gi"),
        ("500m", 3, "1500m"),
        ("0.5", 3, "1.5"),
        ("1.25", 4, "5"),
        ("2", 1, "2"),
    ],
)
def test_quantities_scale_by_the_gpus(quantity: str, factor: int, product: str) -> None:
    assert multiply_quantity(quantity, factor) == product


def test_every_ray_pod_runs_as_the_runtime_images_unprivileged_user() -> None:
    _, rayjob = rendered(job())
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        assert template["spec"]["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            # Not a recursive chown of every volume (a model PVC of hundreds of GB) at every pod start.
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        for container in template["spec"]["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            }


LONG_NAME = "team-search-qwen3-8b-to-qwen3-0-6b-offpolicy-distill-2026-12-01"  # 63 characters, a GitOps name
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(
    "name",
    ["demo", "a" * 42, "a" * 43, "a" * 47, "a" * 48, LONG_NAME, LONG_NAME[:-1] + "2", "2026-12-distill"],
)
def test_child_names_are_short_dns_1035_labels_for_any_dns_label_job_name(name: str) -> None:
    assert len(name) <= 63
    config_map, rayjob = rendered(job({"name": name, "namespace": "ml", "uid": "u"}))
    for child in (config_map, rayjob):
        child_name = child["metadata"]["name"]
        assert len(child_name) <= 47, child_name
        assert DNS_1035_LABEL.match(child_name), child_name
        assert child["metadata"]["labels"]["kubedistill.io/job"] == name
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "kubedistill-job", "configMap": {"name": config_map["metadata"]["name"]}} in head[
        "volumes"
    ]


def test_a_name_that_fits_is_kept_and_a_longer_one_is_cut_with_a_hash() -> None:
    assert [obj["metadata"]["name"] for obj in rendered(job())] == ["demo-spec", "demo"]
    config_map, rayjob = rendered(job({"name": LONG_NAME, "namespace": "ml"}))
    assert rayjob["metadata"]["name"].startswith(LONG_NAME[:30])
    assert config_map["metadata"]["name"].endswith("-spec")


def test_derived_names_are_stable_and_apart_for_names_that_share_their_beginning() -> None:
    names = {}
    for name in (LONG_NAME, LONG_NAME[:-1] + "2", LONG_NAME[:-1] + "3", "a" * 48, "a" * 49):
        first = [obj["metadata"]["name"] for obj in rendered(job({"name": name, "namespace": "ml"}))]
        again = [obj["metadata"]["name"] for obj in rendered(job({"name": name, "namespace": "ml"}))]
        assert first == again
        names[name] = tuple(first)
    assert len(set(names.values())) == len(names)
    assert len({child for pair in names.values() for child in pair}) == 2 * len(names)


def test_by_default_a_finished_jobs_ray_cluster_and_its_gpus_go_within_minutes() -> None:
    # KubeRay deletes the RayCluster (GPU workers included) at endTime + ttlSecondsAfterFinished
    # (rayjob_controller.go); Kueue gives the quota back at the end already.
    _, rayjob = rendered(job())
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True
    assert rayjob["spec"]["ttlSecondsAfterFinished"] <= 300


def test_a_finished_cluster_can_be_kept_for_debugging() -> None:
    _, rayjob = rendered(job(ttlSecondsAfterFinished=86400))
    assert rayjob["spec"]["ttlSecondsAfterFinished"] == 86400


def test_kuberay_submits_the_job_itself_so_no_submitter_pod_follows_its_logs() -> None:
    # K8sJobMode's submitter Job ends in `ray job logs --follow` (common/job.go:130 at kuberay feeaf72f), and
    # its end, clean or not, ended the RayJob while training ran.
    _, rayjob = rendered(job())
    assert rayjob["spec"]["submissionMode"] == "HTTPMode"
    assert not {"submitterPodTemplate", "submitterConfig"} & set(rayjob["spec"])


@pytest.mark.parametrize(
    ("spec", "pre_running"), [({}, 3600), ({"preRunningDeadlineSeconds": 600}, 600)], ids=["default", "set"]
)
def test_a_ray_cluster_that_never_runs_fails_the_attempt_after_the_pre_running_deadline(
    spec: dict[str, Any], pre_running: int
) -> None:
    _, rayjob = rendered(job(**spec))
    assert rayjob["spec"]["preRunningDeadlineSeconds"] == pre_running
    assert "activeDeadlineSeconds" not in rayjob["spec"]


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _pods(rayjob: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    return cluster["headGroupSpec"]["template"], [group["template"] for group in cluster["workerGroupSpecs"]]


def test_the_head_takes_its_own_placement_not_the_gpu_workers() -> None:
    head_placement = {
        "nodeSelector": {"pool": "cpu"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    }
    cluster = {"nodeSelector": {"pool": "h100"}, "tolerations": [GPU_TOLERATION], "head": head_placement}
    head, workers = _pods(rendered(job(cluster=cluster))[1])
    assert head["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert head["spec"]["tolerations"] == head_placement["tolerations"]
    assert "affinity" not in head["spec"], "a chosen node selector is the whole placement"
    for worker in workers:
        assert (worker["spec"]["nodeSelector"], worker["spec"]["tolerations"]) == (
            {"pool": "h100"},
            [GPU_TOLERATION],
        )


def test_by_default_the_head_keeps_off_gpu_nodes() -> None:
    cluster = {"nodeSelector": {"pool": "h100"}, "tolerations": [GPU_TOLERATION]}
    head, _ = _pods(rendered(job(cluster=cluster))[1])
    assert "nodeSelector" not in head["spec"] and "tolerations" not in head["spec"]
    (preferred,) = head["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["preference"] == {
        "matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"}]
    }
    assert set(head["spec"]["containers"][0]["resources"]["limits"]) == {"cpu", "memory"}


def test_worker_pods_ask_for_rdma_devices_secondary_networks_and_locked_memory() -> None:
    networks = "kubedistill/ib-0,kubedistill/ib-1"
    worker = {
        "extraResources": {"rdma/ib": "1"},
        "annotations": {"k8s.v1.cni.cncf.io/networks": networks},
        "ipcLock": True,
    }
    head, workers = _pods(rendered(job(cluster={"worker": worker}))[1])
    assert len(workers) == 2
    for template in workers:
        (container,) = template["spec"]["containers"]
        assert (
            container["resources"]["requests"]["rdma/ib"]
            == container["resources"]["limits"]["rdma/ib"]
            == "1"
        )
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert template["metadata"]["annotations"] == {"k8s.v1.cni.cncf.io/networks": networks}
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    (head_container,) = head["spec"]["containers"]
    assert "rdma/ib" not in head_container["resources"]["limits"]
    assert "annotations" not in head["metadata"]
    assert head_container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_kuberays_own_head_service_for_the_rayjob_reaches_the_head_pod() -> None:
    # `kubectl port-forward svc/<rayjob>-head-svc 8265` (KubeRay's docs) needs the head pod selected.
    head, _ = _pods(rendered(job())[1])
    labels = kuberay.pod_labels(head["metadata"]["labels"], "head", "demo-x7k2p", "headgroup")
    assert kuberay.rayjob_head_service_selector("demo-x7k2p").items() <= labels.items()
    assert labels["kubedistill.io/job"] == labels["app.kubernetes.io/instance"] == "demo"
    assert labels["app.kubernetes.io/managed-by"] == "kubedistill"


def test_the_port_kuberay_scrapes_as_rays_is_rays_and_the_trainer_serves_on_its_own() -> None:
    head, _ = _pods(rendered(job())[1])
    (container,) = head["spec"]["containers"]
    ports = kuberay.head_service_ports(container["ports"])
    assert ports["metrics"] == 8080, "Ray's exporter, where KubeRay's monitors look for Ray's metrics"
    assert ports[TRAINER_METRICS_PORT_NAME] == 8090
    assert {"name": "KUBEDISTILL_METRICS_PORT", "value": "8090"} in container["env"]
    assert len(set(ports.values())) == len(ports), "no port is exposed twice"


def test_the_ray_cluster_names_the_ray_that_the_runtime_image_installs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    runtime = pyproject["project"]["optional-dependencies"]["runtime"]
    (ray,) = [Requirement(r) for r in runtime if Requirement(r).name == "ray"]
    (pin,) = ray.specifier
    assert pin.operator == "=="
    _, rayjob = rendered(job())
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == pin.version == version("ray")


@pytest.mark.parametrize(("cluster", "seconds"), [({}, 300), ({"terminationGracePeriodSeconds": 900}, 900)])
def test_every_ray_pod_gives_the_trainer_time_to_checkpoint_after_sigterm(
    cluster: dict[str, Any], seconds: int
) -> None:
    """Eviction, preemption and a drain send SIGTERM, then SIGKILL after the pod's grace period (Kubernetes'
    default 30 s): the trainer ends its step and writes a checkpoint in between."""
    _, rayjob = rendered(job(cluster=cluster))
    head, workers = _pods(rayjob)
    assert [pod["spec"]["terminationGracePeriodSeconds"] for pod in (head, *workers)] == [seconds] * (
        1 + len(workers)
    )


def test_the_head_hands_sigterm_to_the_trainer_before_ray_stops() -> None:
    """The pod's SIGTERM reaches only `ray start`, which stops Ray at once; the preStop hook, which the
    kubelet runs first and waits for, gives it to the trainer (`kubedistill run`) and waits while it
    checkpoints."""
    _, rayjob = rendered(job())
    head, workers = _pods(rayjob)
    (container,) = head["spec"]["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:3] == ["python3", "-I", "-m"]
    assert importlib.util.find_spec(command[3]) is not None, command[3]
    assert all("lifecycle" not in worker["spec"]["containers"][0] for worker in workers)
