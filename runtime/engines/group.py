"""Starting the actors of a teacher or rollout group where their engines can run, and stopping them."""

from dataclasses import dataclass, field

import ray
from ray.actor import ActorHandle
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from kubedistill.api.job import DistillationJob
from kubedistill.api.placement import Role
from kubedistill.runtime.cluster.actors import get_all, stop_actors
from kubedistill.runtime.cluster.placement import ClusterView, actor_resources
from kubedistill.runtime.engines.actor import EngineActor
from kubedistill.runtime.engines.layout import engine_placements, engine_slots


@dataclass
class EngineActors:
    engines: list[list[ActorHandle]]
    """Per engine, its actors by node rank."""
    placement_groups: list[PlacementGroup] = field(default_factory=list)

    @property
    def serving(self) -> list[ActorHandle]:
        """The actor of each engine that takes requests (node rank 0)."""
        return [actors[0] for actors in self.engines]

    @property
    def everyone(self) -> list[ActorHandle]:
        return [actor for actors in self.engines for actor in actors]

    def shutdown(self, graceful: bool = True) -> None:
        stop_actors(self.everyone, graceful)
        for group in self.placement_groups:
            remove_placement_group(group)


class EngineActorGroup:
    """What the teacher and rollout groups share: engines whose serving actors take the role's calls, and
    that sleep, wake and stop together."""

    def __init__(self, engines: EngineActors) -> None:
        self._engines = engines
        self.actors = engines.serving
        """One per engine: the actor that takes its requests (an engine spanning nodes has more)."""

    def sleep(self) -> None:
        ray.get([actor.sleep.remote() for actor in self.actors])

    def wake(self) -> None:
        ray.get([actor.wake.remote() for actor in self.actors])

    def shutdown(self, graceful: bool = True) -> None:
        self._engines.shutdown(graceful)


def start_engine_actors(
    actor_class: type[EngineActor],
    job: DistillationJob,
    role: Role,
    *,
    engines: int,
    nodes_per_engine: int,
    gpus_per_actor: float,
    cluster: ClusterView,
    teacher: int | None = None,
) -> EngineActors:
    """Create the actors (an engine spanning nodes gets one per node, on distinct nodes), learn where each
    landed, and start every engine with its placement. `teacher`: the index of one of several colocated
    teachers, whose actors ask for that teacher's own units (`actor_resources`)."""
    colocate = job.spec.cluster.colocate
    resources = actor_resources(role, gpus_per_actor, cluster, colocate, teacher)
    started = EngineActors(engines=[])
    try:
        if nodes_per_engine > 1:
            # One group per engine: its actors on distinct nodes, reserved together.
            started.placement_groups = [
                placement_group([resources.bundle()] * nodes_per_engine, strategy="STRICT_SPREAD")
                for _ in range(engines)
            ]
            ray.get([group.ready() for group in started.placement_groups])
        slots = engine_slots(engines, nodes_per_engine)
        actors = []
        for slot in slots:
            options = resources.ray_options()
            if started.placement_groups:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    started.placement_groups[slot.engine], placement_group_bundle_index=slot.node_rank
                )
            actors.append(ray.remote(actor_class).options(**options).remote(job))
        started.engines = [actors[e * nodes_per_engine : (e + 1) * nodes_per_engine] for e in range(engines)]
        placements = engine_placements(
            slots,
            ray.get([actor.land.remote() for actor in actors]),
            nodes_per_engine=nodes_per_engine,
            gpus_per_actor=int(gpus_per_actor),
            colocate=colocate and cluster.has_gpus,
            gpus_per_node=job.spec.cluster.gpus_per_node,
            on_gpus=cluster.has_gpus,
        )
        # The nodes of a multi-node engine wait for each other: they start together.
        get_all([actor.start.remote(placement) for actor, placement in zip(actors, placements, strict=True)])
    except BaseException:
        started.shutdown(graceful=False)
        raise
    return started
