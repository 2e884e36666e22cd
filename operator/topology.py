"""How many pods of how many GPUs each role gets: the worker groups of the Ray cluster.

Each group advertises one Ray custom resource unit per GPU for every role it hosts
(`kubedistill.api.placement.role_resource`), which is how the runtime's actors find their pods.
"""

from dataclasses import dataclass
from math import ceil

from kubedistill.api.generation import runs_teacher
from kubedistill.api.placement import COLOCATED_GROUP, Role, own_teacher_units, role_resource
from kubedistill.api.spec import DistillationJobSpec, TeacherSpec


@dataclass(frozen=True)
class WorkerGroup:
    name: str
    pods: int
    gpus_per_pod: int
    roles: tuple[Role, ...]
    teachers: int = 0
    """Colocated with spec.teachers (`own_teacher_units`): how many teachers, each with units of its own in
    place of the teacher role's."""

    @property
    def ray_resources(self) -> dict[str, str]:
        """The group's Ray logical resources: its GPUs and one unit per GPU of each role it hosts."""
        units = str(self.gpus_per_pod)
        names = [
            role_resource(role, teacher)
            for role in self.roles
            for teacher in (range(self.teachers) if role == Role.TEACHER and self.teachers else [None])
        ]
        return {"GPU": units} | {name: units for name in names}


def worker_groups(spec: DistillationJobSpec) -> list[WorkerGroup]:
    student = _student_group(spec)
    if spec.cluster.colocate:
        teachers = len(spec.teachers or []) if own_teacher_units(spec) else 0
        return [
            WorkerGroup(COLOCATED_GROUP, student.pods, student.gpus_per_pod, hosted_roles(spec), teachers)
        ]
    groups: list[WorkerGroup] = []
    if runs_teacher(spec):
        groups.extend(_teacher_groups(spec))
    groups.append(student)
    if spec.rollout is not None:
        groups.append(
            WorkerGroup(
                Role.ROLLOUT.value, spec.rollout.engines, spec.rollout.tensor_parallel, (Role.ROLLOUT,)
            )
        )
    return groups


def hosted_roles(spec: DistillationJobSpec) -> tuple[Role, ...]:
    """The job's roles; selfDistillation without a teacher section still runs one (with its defaults), and sft
    one whose teacher generates the responses (spec.generation)."""
    roles = [Role.STUDENT]
    if runs_teacher(spec):
        roles.insert(0, Role.TEACHER)
    if spec.rollout is not None:
        roles.append(Role.ROLLOUT)
    return tuple(roles)


def _teacher_groups(spec: DistillationJobSpec) -> list[WorkerGroup]:
    """The teacher's group; with spec.teachers one group per teacher, teacher-0, teacher-1, ... in their
    order, each of its own size (their pods advertise the same role resource: the runtime starts the larger
    engines first, `runtime.teacher.several`)."""
    if spec.teachers is None:
        return [_teacher_group(spec.teacher or TeacherSpec())]
    teachers = [one.teacher for one in spec.as_each_teacher()]
    return [
        _teacher_group(teacher, f"{Role.TEACHER.value}-{index}")
        for index, teacher in enumerate(teachers)
        if teacher is not None
    ]


def _teacher_group(teacher: TeacherSpec, name: str = Role.TEACHER.value) -> WorkerGroup:
    return WorkerGroup(
        name,
        teacher.replicas * teacher.nodes_per_replica,
        teacher.gpus_per_replica // teacher.nodes_per_replica,
        (Role.TEACHER,),
    )


def _student_group(spec: DistillationJobSpec) -> WorkerGroup:
    replicas, per_node = spec.student.replicas, spec.cluster.gpus_per_node
    return WorkerGroup(
        Role.STUDENT.value, ceil(replicas / per_node), min(replicas, per_node), (Role.STUDENT,)
    )
