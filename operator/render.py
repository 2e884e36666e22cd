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
from kubedistill.operator.pods import head_template, worker_template
from kubedistill.operator.settings import RenderSettings
from kubedistill.operator.topology import WorkerGroup, worker_groups

KubeObject = dict[str, Any]

RAYJOB_API_VERSION = "ray.io/v1"
CONFIG_FILE = JOB_CONFIG_PATH.rsplit("/", 1)[1]
ENTRYPOINT = f"kubedistill run {JOB_CONFIG_PATH}"
RAY_VERSION = "2.60.0"
"""The Ray of the runtime image: pyproject.toml pins it (the operator's own image has no Ray to ask)."""
SUBMISSION_MODE = "HTTPMode"
"""KubeRay submits the job to the head's dashboard itself (rayjob_types.go:84 at kuberay feeaf72f), and only
in K8sJobMode and SidecarMode does it watch a submitter (rayjob_controller.go:230, :279). K8sJobMode's
submitter Job ends in `ray job logs --follow` (common/job.go:130): a log stream that breaks fails the Job
after its retries, and a clean close completes it; either ended the RayJob while training ran. In HTTPMode
KubeRay posts the job once it is not found (rayjob_controller.go:305, :1315) and follows it through the
dashboard's job status, as in every mode; there is no submitter pod to place or secure."""


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
        "submissionMode": SUBMISSION_MODE,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
        "backoffLimit": spec.backoff_limit,
        # Counted from the attempt's start, which KubeRay resets for every new cluster
        # (rayjob_controller.go:916), and checked while the cluster starts (rayjob_controller.go:188).
        "preRunningDeadlineSeconds": spec.pre_running_deadline_seconds,
    }
    if spec.active_deadline_seconds is not None:
        rayjob_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.cluster.queue_name:
        # Kueue's webhook suspends a queued RayJob on creation and un-suspends it on admission.
        metadata["labels"][KUEUE_QUEUE_LABEL] = spec.cluster.queue_name
    else:
        rayjob_spec["suspend"] = spec.suspend
    rayjob_spec["rayClusterSpec"] = {
        "rayVersion": RAY_VERSION,
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
