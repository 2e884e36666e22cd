"""Names and labels of the objects the operator creates for a DistillationJob."""

from collections.abc import Mapping
from typing import Any

from kubedistill.api.job import API_VERSION, KIND

APP_NAME = "kubedistill"
JOB_LABEL = "kubedistill.io/job"
"""Every child object and pod carries it; the operator finds a RayJob's DistillationJob through it."""
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
FIELD_MANAGER = "kubedistill-operator"


def labels_for(job_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/instance": job_name,
        "app.kubernetes.io/managed-by": APP_NAME,
        JOB_LABEL: job_name,
    }


def config_map_name(job_name: str) -> str:
    return f"{job_name}-spec"


def rayjob_name(job_name: str) -> str:
    return job_name


def owner_reference(job_name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job_name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether `obj` names the DistillationJob with this uid as its controller."""
    references = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in references)
