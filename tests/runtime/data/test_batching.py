import random
from collections import Counter
from dataclasses import replace

import pytest

from kubedistill.runtime.data.batching import (
    balance,
    batches_per_epoch,
    global_batches,
    shard_micro_batches,
    steps_per_epoch,
)
from kubedistill.runtime.data.sample import Sample


def sample(name: str, length: int) -> Sample:
    return Sample(
        input_ids=tuple(range(length)),
        target_mask=(False, *[True] * (length - 1)),
        source=name,
        prompt_length=1,
    )


def samples_of(lengths: list[int]) -> list[Sample]:
    return [sample(f"s{i}", length) for i, length in enumerate(lengths)]


def names(batches: list[list[Sample]]) -> list[list[str]]:
    return [[s.source for s in batch] for batch in batches]


def test_global_batches_are_fixed_by_seed_and_epoch() -> None:
    assert global_batches(100, 8, seed=1, epoch=3) == global_batches(100, 8, seed=1, epoch=3)


@pytest.mark.parametrize(("seed", "epoch"), [(1, 4), (2, 3)])
def test_another_seed_or_epoch_gives_another_order(seed: int, epoch: int) -> None:
    assert global_batches(100, 8, seed=seed, epoch=epoch) != global_batches(100, 8, seed=1, epoch=3)


def test_the_data_order_is_stable_across_releases() -> None:
    # A resumed job re-derives the order of its epoch; changing it would repeat or skip samples.
    assert global_batches(6, 2, seed=42, epoch=0) == [[0, 1], [4, 2], [5, 3]]


def test_every_sample_is_in_one_batch_an_epoch_and_the_last_holds_the_remainder() -> None:
    """31 records at global batch 8: the fourth step trains the 7 that used to be dropped unsaid."""
    batches = global_batches(31, 8, seed=0, epoch=0)
    assert [len(batch) for batch in batches] == [8, 8, 8, 7]
    assert sorted(index for batch in batches for index in batch) == list(range(31))


def test_the_full_batches_keep_the_order_they_had_before_the_remainder_was_trained() -> None:
    # A job resumed across the change re-derives its epoch's full batches; on-policy rounds are only those.
    assert global_batches(7, 2, seed=42, epoch=0) == [[0, 1], [4, 2], [6, 5], [3]]


@pytest.mark.parametrize(
    ("num_samples", "batch", "full", "batches"), [(10, 3, 3, 4), (9, 3, 3, 3), (3, 3, 1, 1), (128, 128, 1, 1)]
)
def test_an_epoch_has_its_full_batches_and_one_for_the_remainder(
    num_samples: int, batch: int, full: int, batches: int
) -> None:
    assert steps_per_epoch(num_samples, batch) == full
    assert batches_per_epoch(num_samples, batch) == batches
    assert len(global_batches(num_samples, batch, seed=0, epoch=0)) == batches


def test_too_few_samples_for_one_global_batch_name_the_field() -> None:
    with pytest.raises(
        ValueError, match=r"2 samples do not fill one global batch of 3 \(spec.training.globalBatchSize\)"
    ):
        global_batches(2, 3, seed=0, epoch=0)


@pytest.mark.parametrize(
    ("costs", "bins", "expected"),
    [
        pytest.param([5, 4, 3, 3, 3], 2, [[0, 3], [1, 2, 4]], id="longest-first-to-least-loaded"),
        pytest.param([1, 1, 1, 1], 2, [[0, 2], [1, 3]], id="ties-to-the-lowest-bin"),
        pytest.param([7], 3, [[0], [], []], id="more-bins-than-items"),
        pytest.param([], 2, [[], []], id="nothing"),
    ],
)
def test_balance_assigns_greedily(costs: list[int], bins: int, expected: list[list[int]]) -> None:
    assert balance(costs, bins) == expected


def test_balance_is_near_even_and_uses_every_index_once() -> None:
    costs = random.Random(7).choices(range(1, 4097), k=200)
    assigned = balance(costs, 8)
    assert sorted(i for indices in assigned for i in indices) == list(range(200))
    loads = [sum(costs[i] for i in indices) for indices in assigned]
    # Greedy longest-first never lets two bins differ by more than the costliest item.
    assert max(loads) - min(loads) <= max(costs)
    assert balance(costs, 8) == assigned


def test_fixed_micro_batches_split_the_batch_contiguously_over_ranks() -> None:
    shards = shard_micro_batches(samples_of([4] * 8), ranks=2, micro_batch_size=3, max_tokens=None)
    assert [names(rank) for rank in shards] == [
        [["s0", "s1", "s2"], ["s3"]],
        [["s4", "s5", "s6"], ["s7"]],
    ]


def test_a_batch_that_does_not_split_evenly_gives_the_first_ranks_one_sample_more() -> None:
    """An epoch's last, smaller batch; every rank runs as many micro-batches (an empty one where short)."""
    shards = shard_micro_batches(samples_of([4] * 7), ranks=3, micro_batch_size=2, max_tokens=None)
    assert [names(rank) for rank in shards] == [
        [["s0", "s1"], ["s2"]],
        [["s3", "s4"], []],
        [["s5", "s6"], []],
    ]


LENGTHS = random.Random(3).choices(range(2, 600), k=61)


@pytest.fixture(scope="module")
def dynamic() -> list[list[list[Sample]]]:
    return shard_micro_batches(samples_of([*LENGTHS, 1500]), ranks=4, micro_batch_size=1, max_tokens=1024)


def test_dynamic_batching_gives_every_rank_the_same_number_of_micro_batches(dynamic) -> None:
    assert len({len(rank) for rank in dynamic}) == 1
    assert any(batch == [] for rank in dynamic for batch in rank)


def test_dynamic_micro_batches_stay_within_the_token_budget_once_padded(dynamic) -> None:
    for batch in (batch for rank in dynamic for batch in rank if len(batch) > 1):
        assert max(len(s.input_ids) for s in batch) * len(batch) <= 1024


def test_a_sample_longer_than_the_budget_gets_a_micro_batch_of_its_own(dynamic) -> None:
    holding = [batch for rank in dynamic for batch in rank if any(s.source == "s61" for s in batch)]
    assert names(holding) == [["s61"]]


def test_dynamic_batching_places_every_sample_exactly_once(dynamic) -> None:
    placed = Counter(s.source for rank in dynamic for batch in rank for s in batch)
    assert placed == Counter(f"s{i}" for i in range(62))


def test_dynamic_batching_balances_tokens_over_ranks(dynamic) -> None:
    tokens = [sum(len(s.input_ids) for batch in rank for s in batch) for rank in dynamic]
    assert max(tokens) - min(tokens) <= 1500


def test_dynamic_batching_wins_over_the_micro_batch_size() -> None:
    shards = shard_micro_batches(samples_of([10, 10, 10, 10]), ranks=1, micro_batch_size=1, max_tokens=40)
    assert names(shards[0]) == [["s0", "s1", "s2", "s3"]]


def test_sharding_needs_a_micro_batch_size_or_a_token_budget() -> None:
    with pytest.raises(ValueError, match="set micro_batch_size or max_tokens"):
        shard_micro_batches(samples_of([4]), ranks=1, micro_batch_size=None, max_tokens=None)


# -- packing: rows filled by their real tokens ---------------------------------------------------------------


@pytest.fixture(scope="module")
def packed() -> list[list[list[Sample]]]:
    return shard_micro_batches(
        samples_of([*LENGTHS, 1500]), ranks=4, micro_batch_size=1, max_tokens=1024, packed=True
    )


def test_packed_rows_stay_within_the_token_budget_counting_real_tokens(packed) -> None:
    for batch in (batch for rank in packed for batch in rank if len(batch) > 1):
        assert sum(len(s.input_ids) for s in batch) <= 1024


def test_packing_keeps_every_sample_whole_once_the_equal_micro_batch_count_and_the_rank_balance(
    packed, dynamic
) -> None:
    placed = Counter(s.source for rank in packed for batch in rank for s in batch)
    assert placed == Counter(f"s{i}" for i in range(62))
    assert len({len(rank) for rank in packed}) == 1
    # The ranks get the same samples as with padded dynamic batching: only the rows are cut otherwise.
    assert [sorted(s.source for b in rank for s in b) for rank in packed] == [
        sorted(s.source for b in rank for s in b) for rank in dynamic
    ]


def test_packing_needs_fewer_micro_batches_than_padded_dynamic_batching(packed, dynamic) -> None:
    assert len(packed[0]) < len(dynamic[0])
    holding = [batch for rank in packed for batch in rank if any(s.source == "s61" for s in batch)]
    assert names(holding) == [["s61"]]


def test_a_sample_goes_to_the_first_row_with_room_for_it() -> None:
    """First-fit decreasing: 6 then 5 open two rows of budget 10; 4 fills the first (6 + 4), 3 and 2 fill the
    second (5 + 3 + 2), and 1 fits neither: a third row."""
    shards = shard_micro_batches(
        samples_of([3, 6, 1, 5, 4, 2]), ranks=1, micro_batch_size=1, max_tokens=10, packed=True
    )
    assert names(shards[0]) == [["s1", "s4"], ["s3", "s0", "s5"], ["s2"]]


def test_without_a_token_budget_packing_keeps_the_micro_batch_size() -> None:
    shards = shard_micro_batches(
        samples_of([4] * 5), ranks=1, micro_batch_size=2, max_tokens=None, packed=True
    )
    assert names(shards[0]) == [["s0", "s1"], ["s2", "s3"], ["s4"]]


def grouped(lengths: list[int], group_size: int) -> list[Sample]:
    """Samples whose consecutive `group_size` share a group id (a DPO pair, a GRPO prompt's answers)."""
    return [
        replace(sample(f"g{i // group_size}.{i % group_size}", length), group=i // group_size)
        for i, length in enumerate(lengths)
    ]


def groups_in(batches: list[list[list[Sample]]]) -> list[list[int | None]]:
    return [[s.group for s in batch] for rank in batches for batch in rank]


@pytest.mark.parametrize(
    ("micro_batch_size", "max_tokens", "packed"),
    [(3, None, False), (2, None, False), (None, 40, False), (None, 40, True)],
)
def test_a_group_goes_whole_and_in_order_to_one_micro_batch_of_one_rank(
    micro_batch_size: int | None, max_tokens: int | None, packed: bool
) -> None:
    samples = grouped([9, 4, 12, 3, 5, 7, 16, 2, 6, 6, 8, 11], group_size=2)
    batches = shard_micro_batches(samples, 2, micro_batch_size, max_tokens, packed)
    for batch in (batch for rank in batches for batch in rank):
        for group in {s.group for s in batch}:
            members = [s.source for s in batch if s.group == group]
            assert members == [f"g{group}.0", f"g{group}.1"], "both members, chosen first"
    placed = sorted(s.source for rank in batches for batch in rank for s in batch)
    assert placed == sorted(s.source for s in samples)


def test_a_group_larger_than_the_micro_batch_size_is_a_micro_batch_of_its_own() -> None:
    samples = grouped([5] * 8, group_size=4)
    assert groups_in(shard_micro_batches(samples, 1, 3, None)) == [[0, 0, 0, 0], [1, 1, 1, 1]]


def test_the_micro_batch_size_counts_the_sequences_of_whole_groups() -> None:
    samples = grouped([5] * 8, group_size=2)
    assert groups_in(shard_micro_batches(samples, 1, 4, None)) == [[0, 0, 1, 1], [2, 2, 3, 3]]
