"""Bucketing the student's weights and laying out the NCCL group that carries them to rollout engines."""

import pytest
import ray
import torch

from kubedistill.api import parse_job
from kubedistill.runtime.cluster.placement import ClusterView
from kubedistill.runtime.engines.transformers.model import WeightUpdateCounts
from kubedistill.runtime.engines.transformers.teacher import TransformersTeacher
from kubedistill.runtime.engines.weight_sync import (
    WEIGHT_SYNC_GROUP,
    TensorMeta,
    WeightSyncGroup,
    buckets,
    tcp_init_method,
    tensor_metas,
    tensor_nbytes,
    weight_sync_layout,
)
from kubedistill.runtime.models.loading import load_causal_lm
from kubedistill.runtime.rollout.group import RolloutActorGroup
from kubedistill.runtime.student.group import StudentActorGroup
from tests.runtime.conftest import TINY_ROLLOUT, TinyWorld, job_manifest


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


def test_an_engine_takes_weights_only_inside_a_weight_update_session(tiny: TinyWorld) -> None:
    # SGLang 0.5.23 refuses update_weights_from_tensor outside begin/end_weight_update; so does this engine.
    teacher = TransformersTeacher(str(tiny.teacher), torch.float32, torch.device("cpu"))
    weights = list(load_causal_lm(str(tiny.teacher)).named_parameters())
    with pytest.raises(RuntimeError, match="outside a weight-update session"):
        teacher.update_weights(weights)
    teacher.begin_weight_update()
    with pytest.raises(RuntimeError, match="already in progress"):
        teacher.begin_weight_update()
    teacher.update_weights(weights[:2])
    teacher.update_weights(weights[2:])
    teacher.end_weight_update()
    assert teacher.weight_update_counts() == WeightUpdateCounts(sessions=1, loads=2)


@pytest.mark.usefixtures("ray_session")
def test_a_colocated_sync_opens_one_session_per_engine_however_many_buckets_it_sends(
    tiny: TinyWorld,
) -> None:
    student_job = parse_job(
        job_manifest(tiny, "session-test", mode="sft", teacher=None, student={"replicas": 1})
    )
    rollout_job = parse_job(job_manifest(tiny, "session-test", mode="onPolicy", rollout=TINY_ROLLOUT))
    cluster = ClusterView.current()
    students = StudentActorGroup(student_job, total_steps=1, cluster=cluster)
    rollout = RolloutActorGroup(rollout_job, cluster)
    try:
        rollout.sleep()  # colocated engines are asleep between their turns, as when the trainer syncs them
        bucket_bytes = 16 * 1024
        sent = students.push_weights(rollout.actors, bucket_bytes=bucket_bytes)
        counts = ray.get(rollout.actors[0].weight_update_counts.remote())
        assert sent > 4 * bucket_bytes and counts.loads > 4
        assert counts.sessions == 1
        students.push_weights(rollout.actors, bucket_bytes=bucket_bytes)
        assert ray.get(rollout.actors[0].weight_update_counts.remote()).sessions == 2
    finally:
        students.shutdown()
        rollout.shutdown()
