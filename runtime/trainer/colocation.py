"""Whose turn it is on the GPUs: decided once per job, asked by the trainer wherever an engine computes.

Engines on GPUs of their own compute whenever asked, so the teacher's work for the next step runs while the
students train this one. Colocated (`spec.cluster.colocate`), teacher, rollout engines and students share the
GPUs: the engines start asleep, and each call is the engine's turn (it wakes, what the students hold on
the GPU waits on the CPU, `student_offload`, and the engine sleeps again, its answers finished, before the
students train). One turn of the teacher may score the batches of several steps (spec.teacher.stepsPerWake,
`steps_of_a_wake`): its answers wait in Ray's object store until their step trains. Several teachers
(spec.teachers) take their turns one after another, each with its own stepsPerWake, while the students are
away once (`SharedGpus.hidden_states_refs`).
"""

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import ray
from ray.actor import ActorHandle

from kubedistill.runtime.student.offload import StudentState
from kubedistill.runtime.teacher.backend import TeacherBatch
from kubedistill.runtime.teacher.several import SeveralTeachers
from kubedistill.runtime.trainer.groups import Groups, Teacher

State = TypeVar("State")


def student_offload(cpu_offload: bool) -> frozenset[StudentState]:
    """What of every student rank leaves the GPU while a colocated engine has it: everything a rank keeps
    there between steps. Gradients are not among them: each step ends by freeing them
    (`StudentOptimizer.zero_grad`, set_to_none), so none exist between steps. With spec.student.cpuOffload
    FSDP2 keeps the parameter shards and the optimizer state on the CPU already, and moves each shard in for
    its use; the teacher head, a buffer FSDP2 does not offload, still leaves."""
    if cpu_offload:
        return frozenset({StudentState.TEACHER_HEAD})
    return frozenset({StudentState.PARAMETERS, StudentState.TEACHER_HEAD, StudentState.OPTIMIZER_STATE})


def steps_of_a_wake(
    first: State,
    steps_per_wake: int,
    trains: Callable[[State], bool],
    advance: Callable[[State], State],
    new_weights_after: Callable[[State], bool],
) -> list[State]:
    """The states the steps of one wake of the teacher start from: `first`'s step and the ones after it, up
    to `steps_per_wake` of them, while `trains` (the step from a state is one the run trains) and while no
    engine takes new weights after the step before (`new_weights_after`, checked on the state that step
    reaches): an on-policy round's end, a self-distillation teacher's update. Those steps need inputs the
    weights trained by then decide, so they wait for a wake of their own."""
    states = [first]
    while len(states) < steps_per_wake:
        following = advance(states[-1])
        if not trains(following) or new_weights_after(following):
            break
        states.append(following)
    return states


class Engines(Protocol):
    """A group that can give the GPUs back: the teacher's or the rollout's."""

    actors: list[ActorHandle]

    def sleep(self) -> None: ...

    def wake(self) -> None: ...


class OwnGpus:
    overlaps = True
    """The next step's teacher work may run while this step's students train."""
    steps_per_wake = 1

    def __init__(self) -> None:
        self.wakes: Counter[str] = Counter()
        """Engines on GPUs of their own never sleep: none."""

    def start(self) -> None:
        """Nothing to hand over: every group has its own devices."""

    @contextlib.contextmanager
    def turn(self, engines: Engines) -> Iterator[None]:
        del engines
        yield

    def finish(self, answers: list[ray.ObjectRef]) -> None:
        """The engine keeps its GPUs after the turn: its answers arrive when they are ready."""
        del answers

    def hidden_states_refs(
        self, teacher: Teacher, steps: list[list[TeacherBatch]]
    ) -> list[list[ray.ObjectRef | None]]:
        """Each step's batches asked of the teacher, all teachers at once."""
        return [list(teacher.hidden_states_refs(batches)) for batches in steps]


class SharedGpus:
    overlaps = False

    def __init__(self, groups: Groups) -> None:
        self._groups = groups
        self._teacher_steps_per_wake = [
            one.teacher.steps_per_wake if one.teacher is not None else 1
            for one in groups.job.spec.as_each_teacher()
        ]
        """Per teacher (one, or each of spec.teachers), the steps one of its wakes scores."""
        self.steps_per_wake = max(self._teacher_steps_per_wake)
        """The steps laid out together: the longest wake's."""
        self._offload = student_offload(groups.job.spec.student.cpu_offload)
        self._awake: Engines | None = None
        self._students_away = False
        self.wakes: Counter[str] = Counter()
        """Turns taken, by role ("teacher", "rollout"; each of several teachers by its worker group's name,
        "teacher-0", "teacher-1", ...): what the summary reports."""

    def start(self) -> None:
        """Engines start asleep: the GPUs are the students' until an engine's turn."""
        for engines in self._groups.engines:
            engines.sleep()

    @contextlib.contextmanager
    def turn(self, engines: Engines) -> Iterator[None]:
        if not engines.actors or engines is self._awake:
            # An SFT job's teacher has no engines: nothing to hand the GPUs to. A turn inside the same
            # engines' turn goes on in it.
            yield
            return
        assert not isinstance(engines, SeveralTeachers), "several teachers take turns one by one"
        with (
            self._students_off(),
            self._awake_for(engines, "teacher" if engines is self._groups.teacher else "rollout"),
        ):
            yield

    def finish(self, answers: list[ray.ObjectRef]) -> None:
        """Inside a turn: the engine must finish before it sleeps; its answers wait in the object store."""
        if answers:
            ray.wait(answers, num_returns=len(answers), fetch_local=False)

    def hidden_states_refs(
        self, teacher: Teacher, steps: list[list[TeacherBatch]]
    ) -> list[list[ray.ObjectRef | None]]:
        """Each step's batches scored in the teacher's turns: one teacher in one wake (the steps are those of
        one wake, `steps_of_a_wake`). Several teachers take theirs one after another while the students stay
        off the GPUs, each in wakes of up to its own stepsPerWake of the steps (one with fewer than the
        longest wakes again within the same absence), and each batch's answers are put side by side."""
        if not isinstance(teacher, SeveralTeachers):
            with self.turn(teacher):
                answers: list[list[ray.ObjectRef | None]] = [
                    list(teacher.hidden_states_refs(batches)) for batches in steps
                ]
                self.finish([ref for refs in answers for ref in refs if ref is not None])
            return answers
        by_teacher: list[list[list[ray.ObjectRef]]] = []
        with self._students_off():
            for index, (group, per_wake) in enumerate(
                zip(teacher.groups, self._teacher_steps_per_wake, strict=True)
            ):
                scored: list[list[ray.ObjectRef]] = []
                for first in range(0, len(steps), per_wake):
                    with self._awake_for(group, f"teacher-{index}"):
                        wake = [
                            group.hidden_states_refs(batches) for batches in steps[first : first + per_wake]
                        ]
                        self.finish([ref for refs in wake for ref in refs])
                    scored.extend(wake)
                by_teacher.append(scored)
        return [list(teacher.side_by_side(list(parts))) for parts in zip(*by_teacher, strict=True)]

    @contextlib.contextmanager
    def _students_off(self) -> Iterator[None]:
        """What the students hold on the GPUs waits on the CPU, once for engine turns one after another."""
        if self._students_away:
            yield
            return
        students = self._groups.students
        students.move_training_state("cpu", self._offload)
        self._students_away = True
        try:
            yield
        finally:
            self._students_away = False
            students.move_training_state("device", self._offload)

    @contextlib.contextmanager
    def _awake_for(self, engines: Engines, role: str) -> Iterator[None]:
        assert self._awake is None, "one engine at a time on shared GPUs"
        engines.wake()
        self._awake = engines
        self.wakes[role] += 1
        try:
            yield
        finally:
            self._awake = None
            engines.sleep()


GpuPolicy = OwnGpus | SharedGpus


def gpu_policy(groups: Groups) -> GpuPolicy:
    return SharedGpus(groups) if groups.job.spec.cluster.colocate else OwnGpus()
