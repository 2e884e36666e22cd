"""A weighted mixture's epochs: exact shares, a pure function of (seed, epoch), every record of a source in
turn."""

from collections import Counter

import pytest

from kubedistill.runtime.data.mixture import Mixture, drawn, share_lines, shares, shuffle_of


@pytest.mark.parametrize(
    "sizes,weights,expected",
    [
        ([6, 4], [0.7, 0.3], [7, 3]),
        ([5, 5], [1.0, 1.0], [5, 5]),
        # 10 / 3 each: the remainders tie, and the earlier source takes the one left over.
        ([4, 3, 3], [1.0, 1.0, 1.0], [4, 3, 3]),
        ([1, 1, 8], [1.0, 1.0, 1.0], [4, 3, 3]),
        # The weights need not sum to 1; 0.1 + 0.2 is not 0.3 in floats, and the shares are still exact.
        ([10, 20], [0.1, 0.2], [10, 20]),
        ([3, 97], [99.0, 1.0], [99, 1]),
        ([1000, 1], [1.0, 1e-6], [1001, 0]),
    ],
)
def test_shares_split_the_sources_total_by_weight_and_add_up_to_it_exactly(
    sizes: list[int], weights: list[float], expected: list[int]
) -> None:
    assert shares(sizes, weights) == expected
    assert sum(shares(sizes, weights)) == sum(sizes)


def test_an_epoch_holds_every_sources_share_drawn_from_its_own_samples() -> None:
    mixture = Mixture(sizes=(6, 4, 10), weights=(0.5, 0.3, 0.2), seed=7)
    chosen = mixture.epoch(0)
    assert len(chosen) == 20
    assert mixture.shares == [10, 6, 4]
    from_each = Counter(0 if i < 6 else 1 if i < 10 else 2 for i in chosen)
    assert from_each == {0: 10, 1: 6, 2: 4}


def test_an_epoch_is_the_same_for_the_same_seed_and_epoch_and_differs_otherwise() -> None:
    mixture = Mixture(sizes=(50, 30), weights=(0.5, 0.5), seed=7)
    assert Mixture(sizes=(50, 30), weights=(0.5, 0.5), seed=7).epoch(3) == mixture.epoch(3)
    assert mixture.epoch(3) != mixture.epoch(4)
    assert Mixture(sizes=(50, 30), weights=(0.5, 0.5), seed=8).epoch(3) != mixture.epoch(3)


def test_an_under_weighted_source_trains_on_others_each_epoch_until_every_record_came_round() -> None:
    size, share = 10, 3
    epochs = [drawn(size, share, seed=7, source=1, epoch=e) for e in range(4)]
    # The first three epochs take nine different records; the fourth finishes the first shuffle with the
    # tenth and starts the next one.
    assert len(set(epochs[0] + epochs[1] + epochs[2])) == 9
    assert set(epochs[0] + epochs[1] + epochs[2] + epochs[3]) == set(range(size))
    assert epochs[0] + epochs[1] + epochs[2] + epochs[3][:1] == shuffle_of(size, seed=7, source=1, number=0)
    assert epochs[3][1:] == shuffle_of(size, seed=7, source=1, number=1)[:2]


def test_an_over_weighted_source_repeats_its_records_about_equally_often() -> None:
    taken = drawn(3, 8, seed=7, source=0, epoch=0)
    assert len(taken) == 8
    assert sorted(Counter(taken).values()) == [2, 3, 3]
    # The next epoch goes on from the third shuffle's third record.
    follows = shuffle_of(3, seed=7, source=0, number=2)[2:] + shuffle_of(3, seed=7, source=0, number=3)
    assert drawn(3, 8, seed=7, source=0, epoch=1)[:4] == follows


def test_sources_have_shuffles_of_their_own() -> None:
    assert shuffle_of(100, seed=7, source=0, number=0) != shuffle_of(100, seed=7, source=1, number=0)


def test_the_share_lines_say_what_each_source_gives_an_epoch() -> None:
    mixture = Mixture(sizes=(2, 8, 10), weights=(0.5, 0.25, 0.25), seed=7)
    assert share_lines(["a", "b", "c"], mixture) == [
        "a: 2 samples, 10 of each epoch's 20 (repeating its samples)",
        "b: 8 samples, 5 of each epoch's 20 (others each epoch, every sample within 2 epochs)",
        "c: 10 samples, 5 of each epoch's 20 (others each epoch, every sample within 2 epochs)",
    ]
