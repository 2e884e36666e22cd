"""When the student stays unsharded through a step: `reshardAfterForward` and what `auto` decides."""

import pytest

from kubedistill.api.spec import Reshard
from kubedistill.runtime.student.parallelize import UNSHARDED_SHARE, keeps_unsharded

GIB = 2**30
H100 = 80 * GIB


def _bf16_full_training(parameters: float) -> int:
    return int(parameters * 2 * 2)  # weights and gradients, two bytes each


@pytest.mark.parametrize(
    ("parameters", "unsharded"),
    [(0.6e9, True), (1.5e9, True), (4e9, False), (8e9, False)],
)
def test_auto_keeps_a_student_unsharded_only_when_it_and_its_gradients_fit_an_eighth_of_a_device(
    parameters: float, unsharded: bool
) -> None:
    size = _bf16_full_training(parameters)
    assert keeps_unsharded(Reshard.AUTO, 8, size, H100, cpu_offload=False) is unsharded
    assert (size * UNSHARDED_SHARE <= H100) is unsharded


def test_auto_never_reshards_on_one_rank_where_a_shard_is_the_whole_model() -> None:
    assert keeps_unsharded(Reshard.AUTO, 1, _bf16_full_training(8e9), H100, cpu_offload=False)


def test_auto_reshards_under_cpu_offload_which_asks_for_the_least_device_memory() -> None:
    assert not keeps_unsharded(Reshard.AUTO, 8, _bf16_full_training(0.6e9), H100, cpu_offload=True)


@pytest.mark.parametrize("world_size", [1, 8])
def test_always_and_never_are_what_the_spec_says_whatever_the_sizes(world_size: int) -> None:
    small, large = _bf16_full_training(0.1e9), _bf16_full_training(70e9)
    for size in (small, large):
        assert not keeps_unsharded(Reshard.ALWAYS, world_size, size, H100, cpu_offload=False)
        assert keeps_unsharded(Reshard.NEVER, world_size, size, H100, cpu_offload=True)
