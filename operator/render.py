"""The Kubernetes objects a DistillationJob becomes: a ConfigMap with the manifest and a KubeRay RayJob.

Pure: the output depends on the job and the settings only (no clock, client or environment), and is
the same for the same input, so GitOps users can diff `kubedistill render` output.
"""

from typing import Any

import yaml

from kubedistill.api.job import DistillationJob
from kubedistill.api.placement import JOB_CONFIG_PATH
from kubedistill.operator.naming import (
    KUEUE_QUEUE_LABEL,
    config_map_name,
    labels_for,
    owner_reference,
    rayjob_name,
)
from kubedistill.operator.pods import head_template, submitter_template, worker_template
from kubedistill.operator.settings import RenderSettings
from kubedistill.operator.topology import WorkerGroup, worker_groups

KubeObject = dict[str, Any]

RAYJOB_API_VERSION = "ray.io/v1"
CONFIG_FILE = JOB_CONFIG_PATH.rsplit("/", 1)[1]
ENTRYPOINT = f"kubedistill run {JOB_CONFIG_PATH}"


def render(job: DistillationJob, settings: RenderSettings) -> list[KubeObject]:
    """The ConfigMap first: the RayJob's pods mount it."""
    return [render_config_map(job), render_rayjob(job, settings)]


def render_config_map(job: DistillationJob) -> KubeObject:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, config_map_name(job.name)),
        "data": {CONFIG_FILE: job_yaml(job)},
    }


def job_yaml(job: DistillationJob) -> str:
    """The manifest as the runtime reads it: validated, defaults filled in, no status or server fields."""
    metadata: dict[str, Any] = {"name": job.name}
    if job.metadata.namespace:
        metadata["namespace"] = job.metadata.namespace
    if job.metadata.labels:
        metadata["labels"] = dict(job.metadata.labels)
    manifest = {
        "apiVersion": job.api_version,
        "kind": job.kind,
        "metadata": metadata,
        "spec": job.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    return yaml.safe_dump(manifest, sort_keys=False, width=110, allow_unicode=True)


def render_rayjob(job: DistillationJob, settings: RenderSettings) -> KubeObject:
    spec = job.spec
    image = spec.cluster.image or settings.default_image
    metadata = _metadata(job, rayjob_name(job.name))
    rayjob_spec: KubeObject = {
        "entrypoint": ENTRYPOINT,
        "submitterPodTemplate": submitter_template(job, image),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
        "backoffLimit": spec.backoff_limit,
    }
    if spec.active_deadline_seconds is not None:
        rayjob_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.cluster.queue_name:
        # Kueue's webhook suspends a queued RayJob on creation and un-suspends it on admission.
        metadata["labels"][KUEUE_QUEUE_LABEL] = spec.cluster.queue_name
    else:
        rayjob_spec["suspend"] = spec.suspend
    rayjob_spec["rayClusterSpec"] = {
        "headGroupSpec": {
            "rayStartParams": {},
            # The trainer driver runs here; no GPU, so Ray places no GPU actor on the head.
            "resources": {"GPU": "0"},
            "template": head_template(job, image),
        },
        "workerGroupSpecs": [_worker_group_spec(job, group, image) for group in worker_groups(spec)],
    }
    return {"apiVersion": RAYJOB_API_VERSION, "kind": "RayJob", "metadata": metadata, "spec": rayjob_spec}


def _worker_group_spec(job: DistillationJob, group: WorkerGroup, image: str) -> KubeObject:
    # A fixed size (replicas = min = max): Kueue admits RayJobs only without autoscaling.
    return {
        "groupName": group.name,
        "replicas": group.pods,
        "minReplicas": group.pods,
        "maxReplicas": group.pods,
        # Ray resources go through the group's `resources`, which KubeRay turns into `ray start --num-gpus`
        # and `--resources`; KubeRay rejects a group that also sets them in rayStartParams.
        "rayStartParams": {},
        "resources": group.ray_resources,
        "template": worker_template(job, group, image),
    }


def _metadata(job: DistillationJob, name: str) -> KubeObject:
    metadata: KubeObject = {"name": name}
    if job.metadata.namespace:
        metadata["namespace"] = job.metadata.namespace
    metadata["labels"] = labels_for(job.name)
    uid = (job.metadata.model_extra or {}).get("uid")
    if uid:
        metadata["ownerReferences"] = [owner_reference(job.name, uid)]
    return metadata
