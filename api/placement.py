"""How the job's roles map onto a Ray cluster: the contract between the operator's rendering of the RayJob
and the runtime's placement of actors.

Each worker group advertises a Ray custom resource per role it hosts, one unit per GPU (or per pod when it
has no GPU), and the runtime asks for those units; so teacher actors land on teacher pods without either
side knowing pod names. A colocated group advertises every role.
"""

from enum import StrEnum

from kubedistill.api.spec import DistillationJobSpec


class Role(StrEnum):
    TEACHER = "teacher"
    STUDENT = "student"
    ROLLOUT = "rollout"


COLOCATED_GROUP = "colocated"
JOB_CONFIG_PATH = "/etc/kubedistill/job.yaml"
"""Where the rendered ConfigMap puts the manifest inside every Ray pod."""


def role_resource(role: Role, teacher: int | None = None) -> str:
    """The Ray custom resource a pod of this role advertises. `teacher`: the index of one of several teachers
    colocated with the students (`own_teacher_units`), whose pods advertise units of each teacher's own."""
    return f"kubedistill_{role}" if teacher is None else f"kubedistill_{role}_{teacher}"


def own_teacher_units(spec: DistillationJobSpec) -> bool:
    """Whether each of the job's teachers asks for units of its own: colocated with spec.teachers. Each
    teacher's engines cover every GPU of the students' pods (`spec.cluster.colocate`'s rule), and with one
    resource for all of them a pod would hold units for several engines of one teacher, so Ray could put two
    of a teacher's engines on one pod and none on another (its GPUs then given twice, `engine_placements`)."""
    return spec.cluster.colocate and spec.teachers is not None
