"""Where each engine actor runs: its GPUs on the node, its node of a multi-node engine."""

import pytest

from kubedistill.runtime.engines.layout import EnginePlacement, Landing, engine_placements, engine_slots


def _landings(*nodes: str) -> list[Landing]:
    return [Landing(node, f"10.0.0.{index + 1}", 40000 + index) for index, node in enumerate(nodes)]


def _one_node_engines(nodes: list[str], width: int, colocate: bool) -> list[EnginePlacement]:
    """Single-node engines, one per entry of `nodes` (where each landed), on 8-GPU nodes."""
    return engine_placements(
        engine_slots(len(nodes), 1),
        _landings(*nodes),
        nodes_per_engine=1,
        gpus_per_actor=width,
        colocate=colocate,
        gpus_per_node=8,
    )


def test_colocated_engines_on_one_node_split_its_gpus_in_order() -> None:
    """The H20 example: eight one-GPU rollout engines colocated on an 8-GPU node, one GPU each."""
    placements = _one_node_engines(["node-a"] * 8, width=1, colocate=True)
    assert [p.base_gpu_id for p in placements] == list(range(8))
    assert all(p.nnodes == 1 and p.dist_init_addr is None for p in placements)


def test_colocated_engines_count_gpus_per_node_and_by_their_width() -> None:
    placements = _one_node_engines(["node-a", "node-b", "node-a", "node-b"], width=4, colocate=True)
    assert [p.base_gpu_id for p in placements] == [0, 0, 4, 4]


def test_engines_with_gpus_of_their_own_start_at_their_first_visible_gpu() -> None:
    placements = _one_node_engines(["node-a"] * 3, width=2, colocate=False)
    assert placements == [EnginePlacement()] * 3


def test_colocated_engines_that_do_not_fit_on_their_node_are_refused() -> None:
    with pytest.raises(ValueError, match=r"need 12 GPUs but spec\.cluster\.gpusPerNode is 8"):
        _one_node_engines(["node-a"] * 3, width=4, colocate=True)


def test_a_multi_node_engine_meets_at_its_node_rank_0_and_every_node_knows_its_rank() -> None:
    """Two teacher replicas of two nodes each (the two-node example, twice)."""
    slots = engine_slots(2, 2)
    assert [(s.engine, s.node_rank) for s in slots] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    placements = engine_placements(
        slots,
        _landings("node-a", "node-b", "node-c", "node-d"),
        nodes_per_engine=2,
        gpus_per_actor=8,
        colocate=False,
        gpus_per_node=8,
    )
    assert [(p.nnodes, p.node_rank, p.dist_init_addr) for p in placements] == [
        (2, 0, "10.0.0.1:40000"),
        (2, 1, "10.0.0.1:40000"),
        (2, 0, "10.0.0.3:40002"),
        (2, 1, "10.0.0.3:40002"),
    ]
    assert [p.serves_requests for p in placements] == [True, False, True, False]


def test_an_ipv6_rendezvous_is_bracketed() -> None:
    assert Landing("n", "fd00::1", 29500).rendezvous == "[fd00::1]:29500"


def test_slots_and_landings_must_match() -> None:
    with pytest.raises(ValueError, match="2 slots but 1 landings"):
        engine_placements(
            engine_slots(2, 1),
            _landings("node-a"),
            nodes_per_engine=1,
            gpus_per_actor=1,
            colocate=False,
            gpus_per_node=8,
        )


@pytest.mark.parametrize("on_gpus", [True, False])
def test_engines_run_on_the_cpu_only_when_the_cluster_has_no_gpus(on_gpus: bool) -> None:
    placements = engine_placements(
        engine_slots(2, 1),
        _landings("node-a", "node-a"),
        nodes_per_engine=1,
        gpus_per_actor=1,
        colocate=False,
        gpus_per_node=8,
        on_gpus=on_gpus,
    )
    assert {p.device for p in placements} == {"cuda" if on_gpus else "cpu"}


def test_a_placement_is_on_gpus_unless_it_says_otherwise() -> None:
    assert EnginePlacement().device == "cuda"
