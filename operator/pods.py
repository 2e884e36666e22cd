"""Pod templates of the Ray head and worker groups."""

import copy
import re
from decimal import Decimal
from typing import Any

from kubedistill.api.job import DistillationJob
from kubedistill.api.placement import JOB_CONFIG_PATH
from kubedistill.api.telemetry import DEFAULT_METRICS_PORT, METRICS_PORT_ENV, NAMESPACE_ENV
from kubedistill.operator.naming import config_map_name, pod_labels_for
from kubedistill.operator.topology import WorkerGroup

KubeObject = dict[str, Any]

JOB_NAME_ENV = "KUBEDISTILL_JOB_NAME"
CONFIG_DIR = JOB_CONFIG_PATH.rsplit("/", 1)[0]
SHM_VOLUME = "dshm"
CONFIG_VOLUME = "kubedistill-job"

RAY_METRICS_PORT = 8080
"""Ray's own metrics exporter (KubeRay's default), beside the trainer's `/metrics` port
(`kubedistill.api.telemetry.DEFAULT_METRICS_PORT`) in the same container."""
TRAINER_METRICS_PORT_NAME = "trainer-metrics"
"""Not `metrics`: KubeRay names Ray's exporter so (utils/constant.go:115 at kuberay feeaf72f), adds a
`metrics` port on 8080 to the head Service when the container names none (common/service.go:413), and its
sample PodMonitor and ServiceMonitor scrape `metrics` as Ray's."""

# KubeRay builds the head Service from the head container's ports once any is declared
# (common/service.go:430), so the ports its workers and dashboard clients use are declared next to the
# trainer's metrics port.
HEAD_PORTS = (
    {"name": "gcs-server", "containerPort": 6379},
    {"name": "dashboard", "containerPort": 8265},
    {"name": "client", "containerPort": 10001},
    {"name": "metrics", "containerPort": RAY_METRICS_PORT},
    {"name": TRAINER_METRICS_PORT_NAME, "containerPort": DEFAULT_METRICS_PORT},
)

GPU_NODE_LABEL = "nvidia.com/gpu.present"
"""The label NVIDIA's GPU Feature Discovery (GPU Operator) puts on every GPU node."""
HEAD_AVOIDS_GPU_NODES: KubeObject = {
    "nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "preference": {"matchExpressions": [{"key": GPU_NODE_LABEL, "operator": "DoesNotExist"}]},
            }
        ]
    }
}
"""Preferred, not required: a cluster without that label, or with nodes of one kind, still runs the head."""


STOP_DRIVER_FIRST: KubeObject = {
    "preStop": {"exec": {"command": ["python3", "-I", "-m", "kubedistill.runtime.cluster.stop_driver"]}}
}
"""The head's preStop hook: the pod's SIGTERM reaches only `ray start`, which stops Ray at once; the hook
sends it to the trainer (`kubedistill run`) first and waits while it checkpoints
(`kubedistill.runtime.cluster.stop_driver`)."""


def head_template(job: DistillationJob, image: str) -> KubeObject:
    """The head runs the trainer driver without a GPU: its own placement, not the GPU workers'."""
    head = job.spec.cluster.head
    resources = {"cpu": head.cpu, "memory": head.memory}
    metrics_port_env = {"name": METRICS_PORT_ENV, "value": str(DEFAULT_METRICS_PORT)}
    container = _ray_container(
        job,
        "ray-head",
        image,
        resources,
        extra_env=[metrics_port_env, *api_key_env(job), *tracker_credentials_env(job)],
    )
    container["ports"] = [dict(port) for port in HEAD_PORTS]
    container["lifecycle"] = copy.deepcopy(STOP_DRIVER_FIRST)
    template = _template(job, container, _ray_volumes(job))
    spec = template["spec"]
    if head.node_selector:
        spec["nodeSelector"] = dict(head.node_selector)
    else:
        spec["affinity"] = copy.deepcopy(HEAD_AVOIDS_GPU_NODES)
    if head.tolerations:
        spec["tolerations"] = copy.deepcopy(head.tolerations)
    return template


def worker_template(job: DistillationJob, group: WorkerGroup, image: str) -> KubeObject:
    cluster = job.spec.cluster
    worker = cluster.worker
    gpus = group.gpus_per_pod
    resources = {
        "cpu": multiply_quantity(worker.cpu_per_gpu, gpus),
        "memory": multiply_quantity(worker.memory_per_gpu, gpus),
        cluster.gpu_resource: str(gpus),
        **worker.extra_resources,
    }
    container = _ray_container(job, "ray-worker", image, resources)
    if worker.ipc_lock:
        container["securityContext"]["capabilities"]["add"] = ["IPC_LOCK"]
    template = _template(job, container, _ray_volumes(job))
    if worker.annotations:
        template["metadata"]["annotations"] = dict(worker.annotations)
    spec = template["spec"]
    if cluster.node_selector:
        spec["nodeSelector"] = dict(cluster.node_selector)
    if cluster.tolerations:
        spec["tolerations"] = copy.deepcopy(cluster.tolerations)
    return template


def multiply_quantity(quantity: str, factor: int) -> str:
    """`64Gi` x 4 = `256Gi`, `500m` x 3 = `1500m`: the number scales, the unit suffix stays."""
    match = _QUANTITY.fullmatch(quantity)
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    product = (Decimal(match["number"]) * factor).normalize()
    return f"{product:f}{match['suffix']}"


_QUANTITY = re.compile(r"(?P<number>[0-9]+(\.[0-9]+)?)(?P<suffix>[a-zA-Z]*)")


def _ray_container(
    job: DistillationJob,
    name: str,
    image: str,
    resources: dict[str, str],
    extra_env: list[KubeObject] | None = None,
) -> KubeObject:
    cluster = job.spec.cluster
    return {
        "name": name,
        "image": image,
        "env": [
            {"name": JOB_NAME_ENV, "value": job.name},
            {"name": NAMESPACE_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            *(extra_env or []),
            *copy.deepcopy(cluster.env),
        ],
        # Limits equal requests: KubeRay derives `ray start --num-cpus/--memory` from the limits, and the
        # GPU resource is only valid with requests equal to limits.
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "volumeMounts": [
            {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            *copy.deepcopy(cluster.volume_mounts),
        ],
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
    }


def api_key_env(job: DistillationJob) -> list[KubeObject]:
    """The generation endpoint's API key, from its Secret: a reference, so the key itself is in no object
    the operator writes (the ConfigMap carries the manifest, which names only the Secret). Only the head
    gets it: the requests are made by the driver (`kubedistill run`), which KubeRay's job submission runs on
    the head; the workers never need the key."""
    generation = job.spec.generation
    endpoint = generation.endpoint if generation else None
    if endpoint is None or endpoint.api_key is None or endpoint.api_key.secret_key_ref is None:
        return []
    ref = endpoint.api_key.secret_key_ref
    return [{"name": endpoint.api_key.env, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def tracker_credentials_env(job: DistillationJob) -> list[KubeObject]:
    """The trackers' credentials (spec.tracking.*.credentials), from their Secrets, like the endpoint's API
    key: references only, on the head only, where the driver writes to the trackers."""
    tracking = job.spec.tracking
    env: list[KubeObject] = []
    for spec in (tracking.mlflow, tracking.wandb):
        credentials = spec.credentials if spec is not None else None
        if credentials is None or credentials.secret_key_ref is None:
            continue
        ref = credentials.secret_key_ref
        secret = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
        env.append({"name": credentials.env, "valueFrom": secret})
    return env


RUNTIME_UID = 10001
"""The unprivileged user of the runtime image (images/runtime/Dockerfile)."""
POD_SECURITY_CONTEXT: KubeObject = {
    "runAsNonRoot": True,
    "runAsUser": RUNTIME_UID,
    "runAsGroup": RUNTIME_UID,
    # Volumes (the shared PVC for checkpoints and exports) become writable by that user, and are chowned
    # only when their root is not already the group's: not every file of a model volume at every start.
    "fsGroup": RUNTIME_UID,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: KubeObject = {
    "allowPrivilegeEscalation": False,
    # Neither Ray nor the GPU device plugin's devices need a Linux capability.
    "capabilities": {"drop": ["ALL"]},
}


def _template(job: DistillationJob, container: KubeObject, volumes: list[KubeObject]) -> KubeObject:
    """A pod of the job: it meets the "restricted" Pod Security Standard, unless the spec's own volumes,
    environment or `cluster.worker.ipcLock` do not. Placement is the caller's: head and workers differ."""
    cluster = job.spec.cluster
    spec: KubeObject = {
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "containers": [container],
        # Time for the trainer to end its step and checkpoint after SIGTERM (runtime/trainer/stopping.py).
        "terminationGracePeriodSeconds": cluster.termination_grace_period_seconds,
    }
    if volumes:
        spec["volumes"] = volumes
    if cluster.image_pull_secrets:
        spec["imagePullSecrets"] = copy.deepcopy(cluster.image_pull_secrets)
    if cluster.priority_class_name:
        spec["priorityClassName"] = cluster.priority_class_name
    if cluster.service_account_name:
        spec["serviceAccountName"] = cluster.service_account_name
    return {"metadata": {"labels": pod_labels_for(job.name)}, "spec": spec}


def _ray_volumes(job: DistillationJob) -> list[KubeObject]:
    cluster = job.spec.cluster
    return [
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}},
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(job.name)}},
        *copy.deepcopy(cluster.volumes),
    ]
