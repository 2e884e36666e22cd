"""Several teachers (spec.teachers): one engine group per teacher, behind the one teacher's interface.

Each teacher's engines are a `TeacherActorGroup` started from the job with that teacher as its only one
(`DistillationJobSpec.as_each_teacher`), so a teacher's backend, replicas and parallelism are its own. For
each micro-batch every group computes its hidden states, and a Ray task puts them side by side,
[tokens x (d_1 + ... + d_n)], in the teachers' order: the student ranks read one object per micro-batch as
with one teacher, and split it by the teachers' widths (`runtime.losses.mixture`). The task costs one more
copy of the micro-batch's hidden states, small beside the teachers' forward passes; a teacher that fails
fails the task, which the student ranks see as any unreadable teacher output (the controller restarts the
teachers and retries the step). Colocated (spec.cluster.colocate), each teacher's engines take turns of their
own on the students' GPUs (`trainer.colocation.SharedGpus.hidden_states_refs`), and ask for units of their
own on the students' pods (`own_teacher_units`).
"""

from concurrent.futures import ThreadPoolExecutor

import ray
import torch
from ray.actor import ActorHandle

from kubedistill.api.job import DistillationJob, SpecError
from kubedistill.api.placement import own_teacher_units
from kubedistill.runtime.cluster.placement import ClusterView
from kubedistill.runtime.models.loading import load_tokenizer
from kubedistill.runtime.models.vision import language_config
from kubedistill.runtime.teacher.backend import TeacherBatch
from kubedistill.runtime.teacher.group import TeacherActorGroup
from kubedistill.runtime.teacher.transfer import WireTensor, from_wire, to_wire


def teacher_jobs(job: DistillationJob) -> list[DistillationJob]:
    """The job once per teacher, that teacher its only one (the job itself when it has one teacher)."""
    return [job.model_copy(update={"spec": spec}) for spec in job.spec.as_each_teacher()]


def teacher_weights(job: DistillationJob) -> list[float]:
    """Each teacher's weight in the mixture (not normalised), in spec.teachers' order."""
    assert job.spec.teachers is not None, "only a job with spec.teachers mixes teachers"
    return [teacher.weight for teacher in job.spec.teachers]


def check_one_vocabulary(job: DistillationJob) -> None:
    """spec.teachers: every teacher has the first's vocabulary (as many output-head rows, the same token for
    each id), since their distributions are mixed token by token and the data is tokenised once, by the first
    teacher's tokenizer. `SpecError` naming the first teacher that differs; nothing without spec.teachers."""
    if job.spec.teachers is None:
        return
    from transformers import AutoConfig

    first, *others = job.spec.teachers
    rows = language_config(AutoConfig.from_pretrained(first.model)).vocab_size
    tokens = load_tokenizer(first.tokenizer or first.model).get_vocab()
    for index, teacher in enumerate(others, start=1):
        field = f"spec.teachers[{index}].model"
        other_rows = language_config(AutoConfig.from_pretrained(teacher.model)).vocab_size
        if other_rows != rows:
            raise SpecError(
                field,
                f"{teacher.model} has a vocabulary of {other_rows} tokens and spec.teachers[0].model "
                f"{first.model} one of {rows}: several teachers are mixed token by token, so they need one "
                "vocabulary",
            )
        if load_tokenizer(teacher.tokenizer or teacher.model).get_vocab() != tokens:
            raise SpecError(
                field,
                f"{teacher.model}'s tokenizer maps tokens to other ids than spec.teachers[0].model "
                f"{first.model}'s: several teachers are mixed token by token, so they need one vocabulary",
            )


@ray.remote(num_cpus=0)
def _side_by_side(*parts: WireTensor) -> WireTensor:
    return to_wire(torch.cat([from_wire(part) for part in parts], dim=-1))


class SeveralTeachers:
    """The teachers' groups, started side by side; they answer together as one teacher would."""

    def __init__(self, job: DistillationJob, cluster: ClusterView) -> None:
        jobs = teacher_jobs(job)
        own_units = own_teacher_units(job.spec)
        started: dict[int, TeacherActorGroup] = {}
        self.groups: list[TeacherActorGroup] = []
        try:
            # All teachers' pods advertise the same role resource (colocated, each teacher its own units on
            # the students' pods, `own_teacher_units`), and an engine fits only a pod of at least its GPUs:
            # the larger engines start first, so each group is left the pods of its own size.
            # Teachers of one size start together (their actors load their models at the same time).
            for size in sorted({_gpus_per_pod(one) for one in jobs}, reverse=True):
                indices = [i for i, one in enumerate(jobs) if _gpus_per_pod(one) == size]
                with ThreadPoolExecutor(max_workers=len(indices)) as pool:
                    futures = {
                        i: pool.submit(TeacherActorGroup, jobs[i], cluster, i if own_units else None)
                        for i in indices
                    }
                started |= {i: f.result() for i, f in futures.items() if f.exception() is None}
                for future in futures.values():
                    if (error := future.exception()) is not None:
                        raise error
        except BaseException:
            for group in started.values():
                group.shutdown(graceful=False)
            raise
        self.groups = [started[i] for i in range(len(jobs))]
        self.hidden_sizes = [group.hidden_size for group in self.groups]
        self.hidden_size = sum(self.hidden_sizes)
        self.actors: list[ActorHandle] = [actor for group in self.groups for actor in group.actors]

    def hidden_states_refs(self, batches: list[TeacherBatch]) -> list[ray.ObjectRef]:
        """One object ref per batch, in order: every teacher's hidden states of it, side by side."""
        return self.side_by_side([group.hidden_states_refs(batches) for group in self.groups])

    def side_by_side(self, parts: list[list[ray.ObjectRef]]) -> list[ray.ObjectRef]:
        """Per batch, one object of every teacher's hidden states of it; `parts`: each teacher's refs, in the
        teachers' order (asked together, or colocated in each teacher's turns)."""
        return [_side_by_side.remote(*refs) for refs in zip(*parts, strict=True)]

    def sleep(self) -> None:
        for group in self.groups:
            group.sleep()

    def wake(self) -> None:
        for group in self.groups:
            group.wake()

    def shutdown(self, graceful: bool = True) -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(self.groups))) as pool:
            list(pool.map(lambda group: group.shutdown(graceful), self.groups))


def _gpus_per_pod(job: DistillationJob) -> int:
    teacher = job.spec.teacher
    assert teacher is not None, "each teacher's job has it as spec.teacher"
    return teacher.gpus_per_replica // teacher.nodes_per_replica


def start_teachers(job: DistillationJob, cluster: ClusterView) -> TeacherActorGroup | SeveralTeachers:
    """The job's teacher engines: one group, or with spec.teachers one group per teacher."""
    if job.spec.teachers is not None:
        return SeveralTeachers(job, cluster)
    return TeacherActorGroup(job, cluster)
