"""Pod templates of the Ray head and worker groups."""

import copy
import re
from decimal import Decimal
from typing import Any

from kubedistill.api.job import DistillationJob
from kubedistill.api.placement import JOB_CONFIG_PATH
from kubedistill.api.telemetry import DEFAULT_METRICS_PORT, METRICS_PORT_ENV, NAMESPACE_ENV
from kubedistill.operator.naming import config_map_name, labels_for
from kubedistill.operator.topology import WorkerGroup

KubeObject = dict[str, Any]

JOB_NAME_ENV = "KUBEDISTILL_JOB_NAME"
CONFIG_DIR = JOB_CONFIG_PATH.rsplit("/", 1)[0]
SHM_VOLUME = "dshm"
CONFIG_VOLUME = "kubedistill-job"

RAY_METRICS_PORT = 8080
"""Ray's own metrics exporter on the head (KubeRay's default), beside the trainer's `/metrics` port
(`kubedistill.api.telemetry.DEFAULT_METRICS_PORT`) in the same container."""

# KubeRay builds the head Service from the head container's ports once any is declared, so the ports
# its submitter and workers use are declared next to the trainer's metrics port.
HEAD_PORTS = (
    {"name": "gcs-server", "containerPort": 6379},
    {"name": "dashboard", "containerPort": 8265},
    {"name": "client", "containerPort": 10001},
    {"name": "metrics", "containerPort": DEFAULT_METRICS_PORT},
    {"name": "ray-metrics", "containerPort": RAY_METRICS_PORT},
)


def head_template(job: DistillationJob, image: str) -> KubeObject:
    head = job.spec.cluster.head
    resources = {"cpu": head.cpu, "memory": head.memory}
    metrics_port_env = {"name": METRICS_PORT_ENV, "value": str(DEFAULT_METRICS_PORT)}
    container = _ray_container(
        job, "ray-head", image, resources, extra_env=[metrics_port_env, *api_key_env(job)]
    )
    container["ports"] = [dict(port) for port in HEAD_PORTS]
    return _template(job, container, _ray_volumes(job))


def worker_template(job: DistillationJob, group: WorkerGroup, image: str) -> KubeObject:
    cluster = job.spec.cluster
    gpus = group.gpus_per_pod
    resources = {
        "cpu": multiply_quantity(cluster.worker.cpu_per_gpu, gpus),
        "memory": multiply_quantity(cluster.worker.memory_per_gpu, gpus),
        cluster.gpu_resource: str(gpus),
    }
    return _template(job, _ray_container(job, "ray-worker", image, resources), _ray_volumes(job))


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
    }


def api_key_env(job: DistillationJob) -> list[KubeObject]:
    """The generation endpoint's API key, from its Secret: a reference, so the key itself is in no object
    the operator writes (the ConfigMap carries the manifest, which names only the Secret). Only the head
    gets it: the requests are made by the driver (`kubedistill run`), which KubeRay's job submission runs on
    the head; the workers and the submitter never need the key."""
    generation = job.spec.generation
    endpoint = generation.endpoint if generation else None
    if endpoint is None or endpoint.api_key is None or endpoint.api_key.secret_key_ref is None:
        return []
    ref = endpoint.api_key.secret_key_ref
    return [{"name": endpoint.api_key.env, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


SUBMITTER_CONTAINER = "ray-job-submitter"
SUBMITTER_RESOURCES: KubeObject = {
    "requests": {"cpu": "500m", "memory": "200Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}
"""KubeRay's own for its default submitter (GetDefaultSubmitterContainer, common/job.go:230-246 at
feeaf72f)."""


def submitter_template(job: DistillationJob, image: str) -> KubeObject:
    """The pod of KubeRay's submitter Job (K8sJobMode), which runs `ray job submit` against the head.

    Without it KubeRay builds one with only a container and `restartPolicy: Never` (GetSubmitterTemplate,
    common/job.go:215-227 at feeaf72f): no service account, pull secrets, node selector, tolerations or
    security context, so a private registry or restricted Pod Security rejects it. The container has no
    command: KubeRay then sets its own submit command and env (configureSubmitterContainer,
    rayjob_controller.go:634-662). SidecarMode, the alternative without a separate pod, injects KubeRay's
    container into the head pod without a securityContext, which restricted Pod Security rejects too.
    """
    container = {"name": SUBMITTER_CONTAINER, "image": image, "resources": copy.deepcopy(SUBMITTER_RESOURCES)}
    template = _template(job, container, [])
    template["spec"]["restartPolicy"] = "Never"
    return template


RUNTIME_UID = 10001
"""The unprivileged user of the runtime image (images/runtime/Dockerfile)."""
POD_SECURITY_CONTEXT: KubeObject = {
    "runAsNonRoot": True,
    "runAsUser": RUNTIME_UID,
    "runAsGroup": RUNTIME_UID,
    # Volumes (the shared PVC for checkpoints and exports) become writable by that user.
    "fsGroup": RUNTIME_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: KubeObject = {
    "allowPrivilegeEscalation": False,
    # Neither Ray nor the GPU device plugin's devices need a Linux capability.
    "capabilities": {"drop": ["ALL"]},
}


def _template(job: DistillationJob, container: KubeObject, volumes: list[KubeObject]) -> KubeObject:
    """A pod of the job: it meets the "restricted" Pod Security Standard, unless the spec's own volumes
    or environment do not."""
    cluster = job.spec.cluster
    container["securityContext"] = copy.deepcopy(CONTAINER_SECURITY_CONTEXT)
    spec: KubeObject = {"securityContext": copy.deepcopy(POD_SECURITY_CONTEXT), "containers": [container]}
    if volumes:
        spec["volumes"] = volumes
    if cluster.image_pull_secrets:
        spec["imagePullSecrets"] = copy.deepcopy(cluster.image_pull_secrets)
    if cluster.node_selector:
        spec["nodeSelector"] = dict(cluster.node_selector)
    if cluster.tolerations:
        spec["tolerations"] = copy.deepcopy(cluster.tolerations)
    if cluster.priority_class_name:
        spec["priorityClassName"] = cluster.priority_class_name
    if cluster.service_account_name:
        spec["serviceAccountName"] = cluster.service_account_name
    return {"metadata": {"labels": labels_for(job.name)}, "spec": spec}


def _ray_volumes(job: DistillationJob) -> list[KubeObject]:
    cluster = job.spec.cluster
    return [
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}},
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(job.name)}},
        *copy.deepcopy(cluster.volumes),
    ]
