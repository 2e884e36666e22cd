"""Engines that follow the student's weights (on-policy rollout engines, a self-distillation teacher), behind
one `sync()`: after each step the trainer asks them all, and those whose turn it is take the new weights.

How the weights travel is each follower's business: rollout engines on GPUs of their own are in a broadcast
group with student rank 0 (NCCL on GPUs, gloo on CPU); colocated ones, and the self-distillation teacher,
take CPU tensors through Ray, one weight-update session per sync.
"""

from typing import Protocol

from kubedistill.api.placement import Role
from kubedistill.api.spec import Mode
from kubedistill.runtime.data.images import ImageInputs
from kubedistill.runtime.rollout.backend import SamplingConfig
from kubedistill.runtime.rollout.group import RolloutActorGroup
from kubedistill.runtime.trainer.checkpoints import TrainerState
from kubedistill.runtime.trainer.colocation import GpuPolicy
from kubedistill.runtime.trainer.groups import Groups
from kubedistill.runtime.trainer.records import ProbeRecord, Record
from kubedistill.runtime.trainer.sources import BatchSource


class Follower(Protocol):
    role: Role
    """Whose engines follow: a restart of that group brings the new engines to the weights they held."""

    def due(self, state: TrainerState) -> bool:
        """Whether the engines take the weights trained up to `state` (checked after each step)."""
        ...

    def sync(self, step: int) -> list[Record]: ...

    def restore(self) -> None:
        """Bring engines that start from the initial weights (a resumed run, restarted engines) to the
        weights they would hold had nothing stopped."""
        ...

    def rejoin(self) -> None:
        """After the student ranks restarted: open whatever channel the weights travel on anew."""
        ...


class RolloutEngines:
    """On-policy: a new rollout round samples with the weights trained up to it."""

    role = Role.ROLLOUT

    def __init__(
        self,
        groups: Groups,
        rollout: RolloutActorGroup,
        source: BatchSource,
        gpus: GpuPolicy,
        probe: "Probe",
    ) -> None:
        self._groups = groups
        self._rollout = rollout
        self._source = source
        self._gpus = gpus
        self._probe = probe
        self._broadcasts = not groups.job.spec.cluster.colocate
        """Engines on GPUs of their own take the weights over a broadcast group; colocated ones as CPU
        tensors through Ray (node-local: shared memory on SGLang)."""
        self.rejoin()

    def due(self, state: TrainerState) -> bool:
        return self._source.needs_new_weights(state.epoch, state.batch_in_epoch)

    def sync(self, step: int) -> list[Record]:
        self.restore()
        with self._gpus.turn(self._rollout):
            images: list[ImageInputs | None] | None = (
                None if self._probe.images is None else [self._probe.images]
            )
            response = self._rollout.generate([self._probe.prompt], self._probe.sampling, images)[0]
        return [ProbeRecord(step, self._probe.decode(response))]

    def restore(self) -> None:
        students = self._groups.students
        if self._broadcasts:
            students.broadcast_weights(self._rollout.actors)
        else:
            students.push_weights(self._rollout.actors)

    def rejoin(self) -> None:
        if self._broadcasts:
            rollout = self._rollout
            self._groups.students.join_engines(rollout.actors, rollout.tensor_parallel, rollout.sglang)


class Probe:
    """The student's greedy answer to the first training prompt after each rollout sync."""

    def __init__(
        self, prompt: list[int], max_new_tokens: int, decode: "Decode", images: ImageInputs | None = None
    ) -> None:
        self.prompt = prompt
        self.images = images
        """The prompt's pictures (a vision-language student)."""
        self.sampling = SamplingConfig(
            max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, samples_per_prompt=1, seed=0
        )
        self.decode = decode


class Decode(Protocol):
    def __call__(self, tokens: list[int]) -> str: ...


class SelfDistillationTeacher:
    """The teacher takes the student's weights (or their moving average) every `teacherUpdateFreq` steps;
    the copy of its head every student rank uses follows."""

    role = Role.TEACHER

    def __init__(self, groups: Groups) -> None:
        self._groups = groups
        self._every = groups.job.spec.distillation.teacher_update_freq

    def due(self, state: TrainerState) -> bool:
        return state.step % self._every == 0

    def sync(self, step: int) -> list[Record]:
        del step
        self._groups.students.become_teacher(self._groups.teacher.actors)
        return []

    def restore(self) -> None:
        self._groups.students.restore_teacher(self._groups.teacher.actors)

    def rejoin(self) -> None:
        """The weights travel through Ray: no channel to reopen."""


class Followers:
    def __init__(self, followers: list[Follower]) -> None:
        self._followers = followers

    def sync(self, state: TrainerState) -> list[Record]:
        """After the step that reached `state`: every follower whose turn it is takes the new weights."""
        return [record for f in self._followers if f.due(state) for record in f.sync(state.step)]

    def blocks_prefetch(self, following: TrainerState) -> bool:
        """Whether the step after `following` needs the weights `following`'s step produces, so it cannot be
        prepared while that step trains."""
        return any(f.due(following) for f in self._followers)

    def restore(self, role: Role | None = None) -> None:
        """Every follower (`role`: those of a restarted group) takes the weights it should hold."""
        for follower in self._followers:
            if role is None or follower.role == role:
                follower.restore()

    def rejoin(self) -> None:
        for follower in self._followers:
            follower.rejoin()


def followers_of(groups: Groups, source: BatchSource, gpus: GpuPolicy, probe: Probe) -> Followers:
    """The engines of this job that follow the student: built once, with the groups."""
    followers: list[Follower] = []
    if groups.rollout is not None:
        followers.append(RolloutEngines(groups, groups.rollout, source, gpus, probe))
    if groups.job.spec.mode == Mode.SELF_DISTILLATION:
        followers.append(SelfDistillationTeacher(groups))
    return Followers(followers)
