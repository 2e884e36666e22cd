"""What a distillation loss returns, whichever implementation computed it."""

from dataclasses import dataclass

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
