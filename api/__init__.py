"""The DistillationJob API: the one source of truth for the manifest, the CRD and the runtime's config.

Torch-free and Ray-free: the operator image imports it.
"""

from kubedistill.api.job import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    DistillationJob,
    InvalidJob,
    parse_job,
)
from kubedistill.api.rules import Problem
from kubedistill.api.spec import DistillationJobSpec, Mode
from kubedistill.api.status import Condition, ConditionType, DistillationJobStatus, Phase, Reason

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Condition",
    "ConditionType",
    "DistillationJob",
    "DistillationJobSpec",
    "DistillationJobStatus",
    "InvalidJob",
    "Mode",
    "Phase",
    "Problem",
    "Reason",
    "parse_job",
]
