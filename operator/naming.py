"""Names and labels of the objects the operator creates for a DistillationJob."""

import hashlib
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


def pod_labels_for(job_name: str) -> dict[str, str]:
    """The labels of the Ray pods' templates: ours but `app.kubernetes.io/name`, which KubeRay sets to
    `kuberay` on every Ray pod (common/pod.go:1174 at kuberay feeaf72f) and its per-RayJob head Service
    `<rayjob>-head-svc` selects on (common/job.go:25 builds it without the template's labels, so its
    selector is KubeRay's defaults, common/service.go:30 and :52); a template label replaces KubeRay's
    (common/pod.go:1187), which left that Service without endpoints."""
    labels = labels_for(job_name)
    del labels["app.kubernetes.io/name"]
    return labels


MAX_CHILD_NAME_LENGTH = 47
"""KubeRay's limit on RayJob names (`MaxRayJobNameLength`, 53 minus the 6 characters of the RayCluster's
random suffix; ray-operator/controllers/ray/utils/validation.go), kept for the ConfigMap too."""
HASH_LENGTH = 8


def rayjob_name(job_name: str) -> str:
    return _child_name(job_name, "")


def config_map_name(job_name: str) -> str:
    return _child_name(job_name, "-spec")


def _child_name(job_name: str, suffix: str) -> str:
    """`job_name + suffix` when that is a short enough DNS-1035 label (which a RayJob name must be); else a
    cut of it with a hash of the whole job name, so that long names sharing a beginning stay apart and
    the same job always gets the same children."""
    name = job_name + suffix
    if len(name) <= MAX_CHILD_NAME_LENGTH and name[0].isalpha():
        return name
    digest = hashlib.sha256(job_name.encode()).hexdigest()[:HASH_LENGTH]
    # A DNS-1123 job name may start with a digit; a DNS-1035 label may not.
    stem = job_name if job_name[0].isalpha() else f"dj-{job_name}"
    room = MAX_CHILD_NAME_LENGTH - len(suffix) - HASH_LENGTH - 1
    return f"{stem[:room].rstrip('-')}-{digest}{suffix}"


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
    references: list[Mapping[str, Any]] = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in references)
