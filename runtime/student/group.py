"""The student actor group: K FSDP2 ranks behind plain methods; placement decided once, here."""

import uuid
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.actor import ActorHandle

from kubedistill.api.job import DistillationJob
from kubedistill.api.placement import Role
from kubedistill.runtime.cluster.actors import get_all, stop_actors
from kubedistill.runtime.cluster.placement import ClusterView, actor_resources
from kubedistill.runtime.engines.sglang.args import NCCL_ENVIRONMENT
from kubedistill.runtime.engines.weight_sync import WEIGHT_SYNC_GROUP, weight_sync_layout
from kubedistill.runtime.student.actor import StudentActor
from kubedistill.runtime.student.batch import MicroBatch
from kubedistill.runtime.student.offload import StudentState
from kubedistill.runtime.student.optimizer import OptimizerPlace
from kubedistill.runtime.student.worker import EvalStats, RankAddress, StepStats

WEIGHT_BUCKET_BYTES = 512 * 1024 * 1024
"""Weights are streamed to rollout and teacher engines in buckets of about this size."""


@dataclass(frozen=True)
class RankWork:
    """One rank's share of a step: its micro-batches and, for each, the teacher's hidden-state ref."""

    micro_batches: list[MicroBatch]
    teacher_refs: list[ray.ObjectRef | None]


def student_actor_options(cluster: ClusterView) -> dict[str, Any]:
    """Ray options of one rank: its resources, and on GPUs the NCCL settings of the engines whose
    weight-update group rank 0 joins (NCCL reads them when the rank's first communicator starts).

    Without GPUs there is no NCCL, and no runtime environment either: an actor that asks for one cannot take
    the worker Ray started ahead of time, and waits for a new Python process to start and import Ray."""
    options = actor_resources(Role.STUDENT, 1.0, cluster).ray_options()
    if cluster.has_gpus:
        env_vars = options.get("runtime_env", {}).get("env_vars", {})
        options["runtime_env"] = {"env_vars": {**env_vars, **NCCL_ENVIRONMENT}}
    return options


class StudentActorGroup:
    def __init__(self, job: DistillationJob, total_steps: int, cluster: ClusterView) -> None:
        world_size = job.spec.student.replicas
        remote = ray.remote(StudentActor).options(**student_actor_options(cluster))
        self.actors = [remote.remote() for _ in range(world_size)]
        master_addr, master_port = ray.get(self.actors[0].rendezvous_address.remote())
        get_all(
            [
                actor.init.remote(job, RankAddress(rank, world_size, master_addr, master_port), total_steps)
                for rank, actor in enumerate(self.actors)
            ]
        )

    @property
    def world_size(self) -> int:
        return len(self.actors)

    def train_step(self, work: list[RankWork], normalizer: int) -> StepStats:
        """Every rank's reduced statistics are identical; rank 0's are returned."""
        return self.step_result(self.start_train_step(work, normalizer))

    def start_train_step(self, work: list[RankWork], normalizer: int) -> list[ray.ObjectRef]:
        """Send every rank its share of a step and return at once, so the driver can lay out the next step
        while the ranks compute; `step_result` waits for it."""
        return [
            actor.train_step.remote(share.micro_batches, share.teacher_refs, normalizer)
            for actor, share in zip(self.actors, work, strict=True)
        ]

    def step_result(self, step: list[ray.ObjectRef]) -> StepStats:
        """Rank 0's statistics, with every rank's per-sample divergences after its own, rank by rank: the
        order of `StepPlan.order`."""
        ranks = get_all(step)
        divergences = tuple(batch for rank in ranks for batch in rank.sample_divergences)
        return replace(ranks[0], sample_divergences=divergences)

    def evaluate(self, work: list[RankWork], normalizer: int) -> EvalStats:
        results = get_all(
            [
                actor.evaluate.remote(share.micro_batches, share.teacher_refs, normalizer)
                for actor, share in zip(self.actors, work, strict=True)
            ]
        )
        return results[0]

    def push_weights(
        self,
        targets: list[ActorHandle],
        *,
        teacher: bool = False,
        bucket_bytes: int = WEIGHT_BUCKET_BYTES,
    ) -> int:
        """Stream the student's current weights (`teacher`: the self-distillation teacher's) into the target
        engines. Returns the bytes sent."""
        sent = get_all(
            [
                actor.push_weights.remote(targets if rank == 0 else [], bucket_bytes, teacher)
                for rank, actor in enumerate(self.actors)
            ]
        )
        return sent[0]

    def join_engines(self, engines: list[ActorHandle], tensor_parallel: int, sglang: bool) -> None:
        """Open a broadcast group of rank 0 and every rank of `engines` (each `tensor_parallel` wide), for
        `broadcast_weights`. Each call opens a new group under a new name, so engines that outlive a restart
        of these ranks join the new group rather than wait on the dead one."""
        address, port = ray.get(self.actors[0].rendezvous_address.remote())
        name = f"{WEIGHT_SYNC_GROUP}_{uuid.uuid4().hex[:12]}"
        layout = weight_sync_layout([tensor_parallel] * len(engines), address, port, name)
        # Every member blocks until all have arrived: the calls go out together.
        joining = [
            engine.init_weight_sync_group.remote(group)
            for engine, group in zip(engines, layout.engines, strict=True)
        ]
        get_all([*joining, self.actors[0].join_weight_sync_group.remote(layout.trainer, sglang)])

    def broadcast_weights(self, engines: list[ActorHandle]) -> int:
        """Broadcast the current weights to the engines of `join_engines`. Returns the bytes sent."""
        sent = get_all(
            [
                actor.broadcast_weights.remote(engines if rank == 0 else [], WEIGHT_BUCKET_BYTES)
                for rank, actor in enumerate(self.actors)
            ]
        )
        return sent[0]

    def move_training_state(self, place: OptimizerPlace, parts: frozenset[StudentState]) -> None:
        """`parts` to the CPU ("cpu") to make room for a colocated engine, back ("device") to train again."""
        get_all([actor.move_training_state.remote(place, parts) for actor in self.actors])

    def become_teacher(self, teachers: list[ActorHandle]) -> int:
        """Self-distillation, at a teacher update: the teacher takes the student's current weights (or their
        moving average), in its engines and in every rank's copy of its head. Returns the bytes sent."""
        get_all([actor.take_teacher_weights.remote() for actor in self.actors])
        return self.restore_teacher(teachers)

    def restore_teacher(self, teachers: list[ActorHandle]) -> int:
        """Self-distillation: the teacher engines and every rank's copy of the teacher's head take the weights
        the teacher holds (after a resume, or a restart of its engines). Returns the bytes sent."""
        sent = self.push_weights(teachers, teacher=True)
        get_all([actor.refresh_teacher_head.remote() for actor in self.actors])
        return sent

    def save_checkpoint(self, directory: str) -> None:
        get_all([actor.save_checkpoint.remote(directory) for actor in self.actors])

    def load_checkpoint(self, directory: str) -> None:
        get_all([actor.load_checkpoint.remote(directory) for actor in self.actors])

    def load_weights(self, directory: str) -> None:
        """The model's weights only, from a checkpoint of another job (spec.checkpoint.resumeFrom)."""
        get_all([actor.load_weights.remote(directory) for actor in self.actors])

    def export(self, directory: str) -> None:
        get_all([actor.export.remote(directory) for actor in self.actors])

    def shutdown(self, graceful: bool = True) -> None:
        stop_actors(self.actors, graceful)
