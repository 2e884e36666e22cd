"""Each sample's mean divergence from the loss's per-position divergences (`per_sample_means`): what an
on-policy round's responses carry (`trainer.rollouts`)."""

import pytest
import torch

from kubedistill.runtime.losses import IGNORE_INDEX
from kubedistill.runtime.losses.output import per_sample_means


def test_each_sample_averages_its_own_unmasked_positions_in_float64() -> None:
    per_position = torch.tensor([1.0, 3.0, 100.0, 2.0, 4.0, 6.0], dtype=torch.float32)
    labels = torch.tensor([7, 7, IGNORE_INDEX, 7, 7, 7])
    sample_index = torch.tensor([0, 0, 0, 2, 2, 2])
    means = per_sample_means(per_position, labels, sample_index, samples=3)
    # The masked 100 counts in neither the sum nor the count; sample 1 has no position at all.
    assert means == [2.0, None, 4.0]


def test_the_means_times_their_counts_sum_to_the_divergence_sum() -> None:
    generator = torch.Generator().manual_seed(0)
    per_position = torch.rand(50, generator=generator, dtype=torch.float64)
    sample_index = torch.sort(torch.randint(0, 6, (50,), generator=generator)).values
    labels = torch.where(torch.rand(50, generator=generator) < 0.2, IGNORE_INDEX, 3)
    means = per_sample_means(per_position, labels, sample_index, samples=6)
    kept = labels != IGNORE_INDEX
    counts = torch.bincount(sample_index[kept], minlength=6).tolist()
    total = sum(mean * count for mean, count in zip(means, counts, strict=True) if mean is not None)
    assert total == pytest.approx(float(per_position[kept].sum()), rel=1e-12)
