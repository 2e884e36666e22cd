"""Where each engine actor of a teacher or rollout group runs: which GPUs of its node, which node of its
engine, and on which backend and device. Pure: the actor group starts its actors, asks each where it landed,
and hands the answer here.

- An engine spanning nodes (`teacher.nodesPerReplica > 1`) has one actor per node; all of them take the
  same `dist_init_addr`, a free port on the node of the actor with node rank 0.
- Engines with GPUs of their own see exactly those (Ray narrows `CUDA_VISIBLE_DEVICES`), so they start at
  GPU 0. Colocated engines see every GPU of the node and take no GPU in Ray's accounting; the engines that
  landed on one node split its GPUs between them in order, each `gpus_per_actor` wide.
"""

import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch

from kubedistill.api.spec import Backend


@dataclass(frozen=True)
class EnginePlacement:
    """Where one SGLang engine runs, decided by the actor group that starts it.

    `base_gpu_id` counts among the GPUs visible to the actor's process: SGLang binds its ranks to
    `base_gpu_id, base_gpu_id + 1, ...` itself, so an actor group that shares GPUs between roles (colocation)
    starts its actors with Ray's `RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1` and names the first GPU here.
    An engine spanning nodes has one actor per node, all with the same `dist_init_addr` (`host:port` on node
    rank 0's pod, a free port there) and their own `node_rank`.

    `device` is "cpu" only when the actor group found no GPU in the Ray cluster (a local run on a machine
    without one): running on the CPU is the placement's decision, never the engine's fallback, so an engine
    placed on GPUs that finds none fails instead of quietly running on the CPU.
    """

    base_gpu_id: int = 0
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None
    device: Literal["cuda", "cpu"] = "cuda"

    def __post_init__(self) -> None:
        if self.base_gpu_id < 0:
            raise ValueError(f"base_gpu_id must be >= 0, got {self.base_gpu_id}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} is not in [0, nnodes={self.nnodes})")
        if self.nnodes > 1 and self.dist_init_addr is None:
            raise ValueError("an engine spanning nodes needs dist_init_addr (host:port of node rank 0)")

    @property
    def serves_requests(self) -> bool:
        """Only node rank 0 has a tokenizer manager; the other nodes only host scheduler ranks."""
        return self.node_rank == 0


def single_node_placement(device: Literal["cuda", "cpu"] = "cuda") -> EnginePlacement:
    """An engine on the first GPUs its actor sees (Ray's CUDA_VISIBLE_DEVICES holds exactly its GPUs), or on
    the CPU of a node without GPUs."""
    return EnginePlacement(device=device)


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
    on_gpus: bool = True,
) -> list[EnginePlacement]:
    """The placement of each actor, in the order of `slots` (and of `landings`, where each one landed);
    `on_gpus` False places every engine on its node's CPU (a cluster without GPUs)."""
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
                device="cuda" if on_gpus else "cpu",
            )
        )
    return placements


def resolve_backend(requested: Backend) -> Backend:
    """`auto` is SGLang where it can run (a GPU and the `sglang` extra), transformers elsewhere."""
    if requested != Backend.AUTO:
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("sglang") is not None:
        return Backend.SGLANG
    return Backend.TRANSFORMERS


def engine_device(placement: EnginePlacement) -> torch.device:
    """The device of a transformers engine: the first GPU of its placement (a colocated engine sees the
    node's every GPU; one with a GPU of its own sees just that one, as GPU 0), else the CPU."""
    return torch.device("cuda", placement.base_gpu_id) if torch.cuda.is_available() else torch.device("cpu")
