"""Every actor group of a job, started together as one object, and replaced in place when one fails.

A job without a teacher (SFT) gets a teacher that asks nothing of anyone, so the trainer's step is the same
for every mode: it asks "the teacher" for hidden states, and an SFT teacher answers with none.
"""

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import ray
from ray.actor import ActorHandle

from kubedistill.api.job import DistillationJob
from kubedistill.runtime.cluster.placement import ClusterView
from kubedistill.runtime.engines.group import EngineActorGroup
from kubedistill.runtime.models.roles import has_teacher
from kubedistill.runtime.rollout.group import RolloutActorGroup
from kubedistill.runtime.student.group import StudentActorGroup
from kubedistill.runtime.teacher.backend import TeacherBatch
from kubedistill.runtime.teacher.group import TeacherActorGroup
from kubedistill.runtime.teacher.several import SeveralTeachers, start_teachers


class NoTeacher:
    """SFT: no engines, no hidden states."""

    actors: list[ActorHandle] = []
    hidden_size = 0

    def hidden_states_refs(self, batches: list[TeacherBatch]) -> list[ray.ObjectRef | None]:
        """No hidden states for any batch: the students train on the data's tokens alone."""
        return [None] * len(batches)

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def shutdown(self, graceful: bool = True) -> None:
        del graceful


Teacher = TeacherActorGroup | SeveralTeachers | NoTeacher


@dataclass
class Groups:
    job: DistillationJob
    total_steps: int
    students: StudentActorGroup
    teacher: Teacher
    rollout: RolloutActorGroup | None
    """On-policy modes only; the batch source and the weight followers are built around it."""

    @classmethod
    def start(cls, job: DistillationJob, total_steps: int, cluster: ClusterView) -> "Groups":
        """Students and teacher start side by side (their actors import torch and load their models at the
        same time), then the rollout engines. A group that did start is stopped when another fails."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            students = pool.submit(StudentActorGroup, job, total_steps, cluster)
            teacher: Future[Teacher] | None = (
                pool.submit(start_teachers, job, cluster) if has_teacher(job) else None
            )
        started = [f.result() for f in (students, teacher) if f is not None and f.exception() is None]
        try:
            for future in (students, teacher):
                if future is not None and (error := future.exception()) is not None:
                    raise error
            rollout = RolloutActorGroup(job, cluster) if job.spec.on_policy else None
        except BaseException:
            for group in started:
                group.shutdown(graceful=False)
            raise
        return cls(job, total_steps, students.result(), teacher.result() if teacher else NoTeacher(), rollout)

    @property
    def engines(self) -> list[EngineActorGroup]:
        """The groups whose engines take turns on the GPUs with the students when colocated."""
        engines: list[EngineActorGroup] = []
        if isinstance(self.teacher, TeacherActorGroup):
            engines.append(self.teacher)
        if isinstance(self.teacher, SeveralTeachers):
            # Each teacher takes its own turns (`SharedGpus.hidden_states_refs`).
            engines.extend(self.teacher.groups)
        if self.rollout is not None:
            engines.append(self.rollout)
        return engines

    def restart_teacher(self) -> None:
        self.teacher.shutdown(graceful=False)
        self.teacher = start_teachers(self.job, ClusterView.current())

    def restart_students(self) -> None:
        self.students.shutdown(graceful=False)
        self.students = StudentActorGroup(self.job, self.total_steps, ClusterView.current())

    def shutdown(self, graceful: bool = True) -> None:
        for group in (self.students, self.teacher, self.rollout):
            if group is not None:
                group.shutdown(graceful)
