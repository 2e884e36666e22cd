"""Whose turn it is on the GPUs: decided once per job, asked by the trainer wherever an engine computes.

Engines on GPUs of their own compute whenever asked, so the teacher's work for the next step runs while the
students train this one. Colocated (`spec.cluster.colocate`), teacher, rollout engines and students share the
GPUs: the engines start asleep, and each call is the engine's turn (it wakes, the students' optimizer state
waits on the CPU, and the engine sleeps again, its answers finished, before the students train).
"""

import contextlib
from collections.abc import Iterator
from typing import Protocol

import ray
from ray.actor import ActorHandle

from kubedistill.runtime.trainer.groups import Groups


class Engines(Protocol):
    """A group that can give the GPUs back: the teacher's or the rollout's."""

    actors: list[ActorHandle]

    def sleep(self) -> None: ...

    def wake(self) -> None: ...


class OwnGpus:
    overlaps = True
    """The next step's teacher work may run while this step's students train."""

    def start(self) -> None:
        """Nothing to hand over: every group has its own devices."""

    @contextlib.contextmanager
    def turn(self, engines: Engines) -> Iterator[None]:
        del engines
        yield

    def finish(self, answers: list[ray.ObjectRef]) -> None:
        """The engine keeps its GPUs after the turn: its answers arrive when they are ready."""
        del answers


class SharedGpus:
    overlaps = False

    def __init__(self, groups: Groups) -> None:
        self._groups = groups

    def start(self) -> None:
        """Engines start asleep: the GPUs are the students' until an engine's turn."""
        for engines in self._groups.engines:
            engines.sleep()

    @contextlib.contextmanager
    def turn(self, engines: Engines) -> Iterator[None]:
        if not engines.actors:
            # An SFT job's teacher has no engines: nothing to hand the GPUs to.
            yield
            return
        students = self._groups.students
        students.move_optimizer_state("cpu")
        engines.wake()
        try:
            yield
        finally:
            engines.sleep()
            students.move_optimizer_state("device")

    def finish(self, answers: list[ray.ObjectRef]) -> None:
        """Inside a turn: the engine must finish before it sleeps; its answers wait in the object store."""
        if answers:
            ray.wait(answers, num_returns=len(answers), fetch_local=False)


GpuPolicy = OwnGpus | SharedGpus


def gpu_policy(groups: Groups) -> GpuPolicy:
    return SharedGpus(groups) if groups.job.spec.cluster.colocate else OwnGpus()
