"""How the job's roles map onto a Ray cluster: the contract between the operator's rendering of the RayJob
and the runtime's placement of actors.

Each worker group advertises a Ray custom resource per role it hosts, one unit per GPU (or per pod when it
has no GPU), and the runtime asks for those units; so teacher actors land on teacher pods without either
side knowing pod names. A colocated group advertises every role.
"""

from enum import StrEnum


class Role(StrEnum):
    TEACHER = "teacher"
    STUDENT = "student"
    ROLLOUT = "rollout"


COLOCATED_GROUP = "colocated"
JOB_CONFIG_PATH = "/etc/kubedistill/job.yaml"
"""Where the rendered ConfigMap puts the manifest inside every Ray pod."""


def role_resource(role: Role) -> str:
    """The Ray custom resource a pod of this role advertises."""
    return f"kubedistill_{role}"
