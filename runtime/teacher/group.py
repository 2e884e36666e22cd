"""The teacher actor group: N engines; micro-batches go to them by a greedy token-balanced rule."""

from typing import cast

import ray

from kubedistill.api.job import DistillationJob
from kubedistill.api.placement import Role
from kubedistill.api.spec import Backend
from kubedistill.runtime.cluster.placement import ClusterView
from kubedistill.runtime.data.batching import balance
from kubedistill.runtime.engines.group import EngineActorGroup, start_engine_actors
from kubedistill.runtime.engines.layout import resolve_backend
from kubedistill.runtime.models.roles import teacher_spec
from kubedistill.runtime.teacher.actor import TeacherActor
from kubedistill.runtime.teacher.backend import TeacherBatch


class TeacherActorGroup(EngineActorGroup):
    def __init__(self, job: DistillationJob, cluster: ClusterView, index: int | None = None) -> None:
        """`index`: which of several colocated teachers this is (its engines ask for its own units)."""
        spec = teacher_spec(job)
        engine_gpus = 1.0
        if resolve_backend(spec.backend) == Backend.SGLANG:
            engine_gpus = spec.gpus_per_replica / spec.nodes_per_replica
        super().__init__(
            start_engine_actors(
                TeacherActor,
                job,
                Role.TEACHER,
                engines=spec.replicas,
                nodes_per_engine=spec.nodes_per_replica,
                gpus_per_actor=engine_gpus,
                cluster=cluster,
                teacher=index,
            )
        )
        # An actor method's result is untyped (Ray's `.remote` is dynamic), and pyright picks `ray.get`'s
        # list overload for it; TeacherActor.hidden_size returns an int.
        self.hidden_size = cast(int, ray.get(self.actors[0].hidden_size.remote()))

    def hidden_states_refs(self, batches: list[TeacherBatch]) -> list[ray.ObjectRef]:
        """One object ref per batch, in order; the longest go first, each to the least-loaded engine."""
        refs: list[ray.ObjectRef | None] = [None] * len(batches)
        assignment = balance([batch.num_tokens for batch in batches], len(self.actors))
        for actor, indices in zip(self.actors, assignment, strict=True):
            for index in indices:
                refs[index] = actor.hidden_states.remote(batches[index])
        return refs  # type: ignore[return-value]
