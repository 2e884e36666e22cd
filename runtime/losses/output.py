"""What a distillation loss returns, whichever implementation computed it."""

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

IGNORE_INDEX = -100
"""Label of a position that is not trained on (prompt, padding), as in transformers and TRL."""


@dataclass(frozen=True)
class LossOutput:
    loss: Tensor
    """Differentiable scalar: ((1 - kd_ratio) * ce_sum + kd_ratio * kd_sum) / normalizer."""
    kd_sum: Tensor
    """Detached sum of the per-token divergence over unmasked tokens (0 without a teacher)."""
    ce_sum: Tensor
    """Detached sum of the per-token cross-entropy on the labels over unmasked tokens."""
    num_tokens: int
    """Unmasked tokens in this call; summed over micro-batches and ranks it is the normalizer."""
    kd_per_position: Tensor | None = None
    """Detached [N]: each position's divergence, 0 where masked, summing to `kd_sum`; None without a
    teacher, and from an algorithm whose divergence is not one per student position (the cross-tokenizer
    ones: theirs is over aligned positions or projected spaces)."""
    figures: Mapping[str, Tensor] = field(default_factory=dict)
    """Detached scalar sums of the algorithm's own figures (`Algorithm.figure_names`) over this call."""


def per_sample_means(
    per_position: Tensor, labels: Tensor, sample_index: Tensor, samples: int
) -> list[float | None]:
    """Each sample's mean divergence over its unmasked positions, in float64: `per_position` and `labels`
    [N], `sample_index` [N] the sample (0 to samples - 1) each position belongs to. None for a sample
    without an unmasked position. Times the sample's unmasked positions, they sum to `kd_sum`."""
    kept = (labels != IGNORE_INDEX).to(per_position.device)
    index = sample_index.to(per_position.device)
    values = torch.where(kept, per_position.to(torch.float64), 0.0)
    sums = values.new_zeros(samples).index_add_(0, index, values)
    counts = torch.bincount(index[kept], minlength=samples)
    return [
        float(total) / int(count) if count else None
        for total, count in zip(sums.tolist(), counts.tolist(), strict=True)
    ]
