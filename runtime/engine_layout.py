"""Where each engine actor of a teacher or rollout group runs: which GPUs of its node, which node of its
engine. Pure: the actor group starts its actors, asks each where it landed, and hands the answer here.

- An engine spanning nodes (`teacher.nodesPerReplica > 1`) has one actor per node; all of them take the
  same `dist_init_addr`, a free port on the node of the actor with node rank 0.
- Engines with GPUs of their own see exactly those (Ray narrows `CUDA_VISIBLE_DEVICES`), so they start at
  GPU 0. Colocated engines see every GPU of the node and take no GPU in Ray's accounting; the engines that
  landed on one node split its GPUs between them in order, each `gpus_per_actor` wide.
"""

from dataclasses import dataclass

from kubedistill.runtime.sglang_args import EnginePlacement


@dataclass(frozen=True)
class EngineSlot:
    """One actor of an engine group: which engine it belongs to, and which node of that engine it is."""

    engine: int
    node_rank: int


@dataclass(frozen=True)
class Landing:
    """Where an actor landed: its Ray node, and an address on that node with a free port."""

    node_id: str
    address: str
    free_port: int

    @property
    def rendezvous(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.free_port}"


def engine_slots(engines: int, nodes_per_engine: int) -> list[EngineSlot]:
    """Engine-major: the actors of engine 0 (node rank 0 first), then those of engine 1, ..."""
    return [
        EngineSlot(engine, node_rank) for engine in range(engines) for node_rank in range(nodes_per_engine)
    ]


def engine_placements(
    slots: list[EngineSlot],
    landings: list[Landing],
    *,
    nodes_per_engine: int,
    gpus_per_actor: int,
    colocate: bool,
    gpus_per_node: int,
) -> list[EnginePlacement]:
    """The placement of each actor, in the order of `slots` (and of `landings`, where each one landed)."""
    if len(slots) != len(landings):
        raise ValueError(f"{len(slots)} slots but {len(landings)} landings")
    rendezvous = {
        slot.engine: landing.rendezvous
        for slot, landing in zip(slots, landings, strict=True)
        if slot.node_rank == 0 and nodes_per_engine > 1
    }
    taken: dict[str, int] = {}
    placements = []
    for slot, landing in zip(slots, landings, strict=True):
        base_gpu_id = 0
        if colocate:
            base_gpu_id = taken.get(landing.node_id, 0)
            taken[landing.node_id] = base_gpu_id + gpus_per_actor
            if base_gpu_id + gpus_per_actor > gpus_per_node:
                raise ValueError(
                    f"engines colocated on node {landing.node_id} need {base_gpu_id + gpus_per_actor} GPUs "
                    f"but spec.cluster.gpusPerNode is {gpus_per_node}"
                )
        placements.append(
            EnginePlacement(
                base_gpu_id=base_gpu_id,
                nnodes=nodes_per_engine,
                node_rank=slot.node_rank,
                dist_init_addr=rendezvous.get(slot.engine),
            )
        )
    return placements
