"""The packed attention (`runtime.student.packed_attention`): each sample of a packed row attends causally to
itself alone, exactly as the whole row under the block-diagonal causal mask transformers builds for sdpa, with
grouped-query attention, in float64."""

import pytest
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from kubedistill.runtime.student.packed_attention import (
    PACKED_LENGTHS,
    attention_name,
    segment_lengths,
    segmented_attention,
)

HEADS, KV_HEADS, DIM = 4, 2, 8


class Attention(nn.Module):
    """What transformers' attention functions read from the layer calling them."""

    is_causal = True
    num_key_value_groups = HEADS // KV_HEADS


def block_causal_mask(lengths: tuple[int, ...]) -> torch.Tensor:
    """[1, 1, T, T]: a token sees the earlier tokens of its own sample (masking_utils.py:991-1002)."""
    sample = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    length = int(sample.numel())
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return (causal & (sample[:, None] == sample[None, :]))[None, None]


def random_qkv(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(1, HEADS, length, DIM), (1, KV_HEADS, length, DIM), (1, KV_HEADS, length, DIM)]
    q, k, v = (torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes)
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_()


@pytest.mark.parametrize(
    "lengths",
    [(5, 1, 7, 3), (1, 1, 6), (3, 3, 2, 3, 1, 1), (9,)],
    ids=["distinct", "single tokens first", "equal lengths batched", "one sample"],
)
def test_the_packed_attention_equals_sdpa_under_the_block_diagonal_mask_with_grouped_query_heads(
    lengths: tuple[int, ...],
) -> None:
    q, k, v = random_qkv(sum(lengths), seed=len(lengths))
    packed = AttentionInterface()[attention_name("sdpa")]
    scaling = DIM**-0.5
    out, weights = packed(Attention(), q, k, v, None, scaling=scaling, **{PACKED_LENGTHS: lengths})
    expected, _ = sdpa_attention_forward(Attention(), q, k, v, block_causal_mask(lengths), scaling=scaling)

    assert weights is None
    assert out.shape == (1, sum(lengths), HEADS, DIM)  # transformers' [B, T, H, D]
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ours = torch.autograd.grad(out, (q, k, v), grad)
    theirs = torch.autograd.grad(expected, (q, k, v), grad)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-14)


def test_without_lengths_the_row_is_split_where_its_positions_restart() -> None:
    lengths = (1, 4, 2)
    q, k, v = random_qkv(sum(lengths), seed=3)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    packed = AttentionInterface()[attention_name("eager")]
    out, _ = packed(Attention(), q, k, v, None, position_ids=positions)
    expected, _ = sdpa_attention_forward(Attention(), q, k, v, block_causal_mask(lengths))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)


def test_the_lengths_of_a_packed_row_start_wherever_a_position_does_not_count_on() -> None:
    positions = torch.tensor([[0, 0, 1, 2, 0, 0, 1]])
    assert segment_lengths(positions) == (1, 3, 1, 2)


def test_lengths_that_do_not_cover_the_row_are_refused() -> None:
    q, k, v = random_qkv(6, seed=0)
    with pytest.raises(ValueError, match="sum to 5, the row has 6"):
        segmented_attention(q, k.repeat(1, 2, 1, 1), v.repeat(1, 2, 1, 1), (2, 3))
