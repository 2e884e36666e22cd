"""Bucketing the student's weights and laying out the NCCL group that carries them to rollout engines."""

import pytest
import torch

from kubedistill.runtime.weight_sync import (
    WEIGHT_SYNC_GROUP,
    TensorMeta,
    WeightSyncGroup,
    buckets,
    tcp_init_method,
    tensor_metas,
    tensor_nbytes,
    weight_sync_layout,
)


@pytest.mark.parametrize(
    ("sizes", "limit", "grouped"),
    [
        ([], 10, []),
        ([4, 4, 4], 8, [[4, 4], [4]]),
        ([4, 4, 4], 12, [[4, 4, 4]]),
        ([3, 20, 3], 8, [[3], [20], [3]]),
        ([8, 1], 8, [[8], [1]]),
    ],
)
def test_buckets_keep_order_and_exceed_the_limit_only_with_one_oversized_item(
    sizes: list[int], limit: int, grouped: list[list[int]]
) -> None:
    assert list(buckets(sizes, lambda size: size, limit)) == grouped


def test_buckets_are_drawn_lazily_from_a_generator() -> None:
    drawn: list[int] = []

    def sizes():
        for size in (5, 5, 5):
            drawn.append(size)
            yield size

    first = next(buckets(sizes(), lambda size: size, 5))
    assert first == [5] and drawn == [5, 5]


def test_tensor_metas_describe_what_an_engine_allocates_to_receive_each_tensor() -> None:
    named = [
        ("a.weight", torch.zeros(3, 4, dtype=torch.bfloat16)),
        ("b.bias", torch.zeros(5, dtype=torch.float32)),
    ]
    metas = tensor_metas(named)
    assert metas == [TensorMeta("a.weight", "bfloat16", (3, 4)), TensorMeta("b.bias", "float32", (5,))]
    # SGLang allocates `torch.empty(shape, dtype=getattr(torch, dtype))` on its side.
    assert [getattr(torch, meta.dtype) for meta in metas] == [torch.bfloat16, torch.float32]
    assert [meta.nbytes for meta in metas] == [tensor_nbytes(item) for item in named] == [24, 20]


def test_the_trainer_is_rank_zero_and_each_engine_follows_the_ranks_of_the_ones_before() -> None:
    layout = weight_sync_layout([2, 1, 4], "10.0.0.1", 29500)
    assert layout.trainer == WeightSyncGroup("10.0.0.1", 29500, 0, 8, WEIGHT_SYNC_GROUP)
    assert [group.rank_offset for group in layout.engines] == [1, 3, 4]
    assert {(g.master_address, g.master_port, g.world_size, g.group_name) for g in layout.engines} == {
        ("10.0.0.1", 29500, 8, WEIGHT_SYNC_GROUP)
    }


@pytest.mark.parametrize(
    ("address", "method"), [("10.0.0.1", "tcp://10.0.0.1:29500"), ("fd00::1", "tcp://[fd00::1]:29500")]
)
def test_the_rendezvous_address_is_a_tcp_url_for_ipv4_and_ipv6(address: str, method: str) -> None:
    assert tcp_init_method(address, 29500) == method
