"""Attention for packed rows that pays each sample's own attention: causal scaled-dot-product attention run
per sample segment of the row, instead of over the whole row under a block-diagonal mask.

transformers (5.25) gives sdpa and eager a packed row's block-diagonal causal mask
(masking_utils.py:991-1002), and their kernels compute every query against every key of the row: a row of
2048 tokens pays 2048^2 however short its samples. flash-attention's varlen path does not
(modeling_flash_attention_utils.py:802); this is the same with torch's sdpa, on any device: a row of samples
n_1..n_k pays sum n_i^2.

The segments are found once per micro-batch (`segment_lengths`, on the CPU, from the positions restarting at
0) and reach every layer's attention through the model's kwargs (`PACKED_LENGTHS`), as flash-attention's
`cu_seq_lens_q` do (utils/generic.py:1003). A call with a mask (padded rows, a placeholder) runs the
implementation the student was loaded with, on the mask the model builds for it: the mask function
registered here is that implementation's, except that a call without a 2-D attention mask (a packed row)
gets none, so the model never builds the row's L x L mask either.
"""

import itertools
import sys
from collections.abc import Callable

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

PACKED_LENGTHS = "packed_lengths"
"""The model kwarg holding a packed row's sample lengths, in order (a tuple of ints summing to its length)."""

BASES = ("sdpa", "eager")
"""The implementations a packed student's attention stands in for (`spec.student.attention`)."""


def attention_name(base: str) -> str:
    """The registered name of the packed attention over `base` (its padded rows' implementation)."""
    return f"kubedistill_packed_{base}"


def segment_lengths(position_ids: torch.Tensor) -> tuple[int, ...]:
    """The lengths of the samples of a packed row ([1, L] positions): a new sample wherever a position is not
    the previous one plus 1, as transformers finds packed sequences (`find_packed_sequence_indices`,
    masking_utils.py:756-758), so a first sample of one token (0, 0, 1, ...) is found too."""
    positions = position_ids.reshape(-1).cpu()
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[1:] = positions[1:] != positions[:-1] + 1
    bounds = [*starts.nonzero().reshape(-1).tolist(), int(positions.numel())]
    return tuple(end - start for start, end in itertools.pairwise(bounds))


def segmented_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lengths: tuple[int, ...],
    dropout: float = 0.0,
    scaling: float | None = None,
) -> torch.Tensor:
    """Causal attention of one row's segments, each to itself ([1, H, T, D] query; key and value already
    repeated to H heads), [1, H, T, D]. Segments of equal length go through one batched sdpa call."""
    by_length: dict[int, list[int]] = {}
    starts = [0]
    for length in lengths:
        by_length.setdefault(length, []).append(len(starts) - 1)
        starts.append(starts[-1] + length)
    if starts[-1] != query.shape[2]:
        raise ValueError(f"packed lengths sum to {starts[-1]}, the row has {query.shape[2]} tokens")
    pieces: list[torch.Tensor | None] = [None] * len(lengths)
    for length, segments in by_length.items():
        if len(segments) == 1:
            start = starts[segments[0]]
            parts = [t.narrow(2, start, length) for t in (query, key, value)]
        else:
            # [n x length] token columns: the segments side by side in the batch dimension.
            columns = torch.tensor([starts[s] for s in segments], device=query.device).unsqueeze(1)
            columns = (columns + torch.arange(length, device=query.device)).reshape(-1)
            parts = [_as_batch(t.index_select(2, columns), len(segments)) for t in (query, key, value)]
        out = nn.functional.scaled_dot_product_attention(
            *parts, dropout_p=dropout, scale=scaling, is_causal=True
        )
        for place, segment in enumerate(segments):
            pieces[segment] = out[place : place + 1] if len(segments) > 1 else out
    return torch.cat([piece for piece in pieces if piece is not None], dim=2)


def _as_batch(row: torch.Tensor, count: int) -> torch.Tensor:
    """[1, H, count x length, D] -> [count, H, length, D]."""
    _, heads, width, dim = row.shape
    return row.reshape(heads, count, width // count, dim).transpose(0, 1)


def _packed_attention_over(base: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    def packed_attention_forward(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: object,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """transformers' attention function contract (integrations/sdpa_attention.py:95-106 @ 5.25): query
        [B, H, T, D], key and value [B, H_kv, T, D] after the rotary embeddings; returns [B, T, H, D] and no
        weights."""
        lengths = kwargs.pop(PACKED_LENGTHS, None)
        if attention_mask is not None:
            return _base_attention(base, module)(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        if lengths is None:
            # No mask and no lengths: the model was called without either, e.g. on a row of restarting
            # positions by hand; found here, once per layer.
            position_ids = kwargs.get("position_ids")
            lengths = (
                (query.shape[2],)
                if not isinstance(position_ids, torch.Tensor) or query.shape[0] != 1
                else segment_lengths(position_ids)
            )
        assert isinstance(lengths, tuple)
        if kwargs.get("softcap") is not None:
            raise ValueError("the packed attention has no logit softcapping: use flash-attention or eager")
        window = kwargs.get("sliding_window")
        if isinstance(window, int) and max(lengths) > window:
            raise ValueError(f"a packed sample of {max(lengths)} tokens exceeds the sliding window {window}")
        if getattr(module, "is_causal", True) is False or kwargs.get("is_causal") is False:
            raise ValueError("the packed attention is causal only")
        groups = int(getattr(module, "num_key_value_groups", 1))
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        if query.shape[0] == 1:
            out = segmented_attention(query, key, value, lengths, dropout, scaling)
        else:
            # Rows that are not packed, without a mask: each is one causal sequence.
            out = nn.functional.scaled_dot_product_attention(
                query, key, value, dropout_p=dropout, scale=scaling, is_causal=True
            )
        return out.transpose(1, 2).contiguous(), None

    return packed_attention_forward


def _base_attention(base: str, module: nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    """The implementation `base` for `module`: transformers' sdpa, or the eager function of the model's own
    modeling file, which the model falls back to for "eager" (e.g. models/qwen3/modeling_qwen3.py:177,255)."""
    if base == "sdpa":
        return sdpa_attention_forward  # type: ignore[return-value]
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ValueError(f"{type(module).__name__}'s modeling file has no eager_attention_forward")
    return eager


def _mask_over(base: str) -> Callable[..., torch.Tensor | None]:
    build = {"sdpa": sdpa_mask, "eager": eager_mask}[base]

    def packed_mask(*args: object, attention_mask: torch.Tensor | None = None, **kwargs: object):
        """`base`'s mask (called with keywords, masking_utils.py:1004-1018), none for a call without a 2-D
        attention mask: a packed row, whose segments the attention takes from its lengths."""
        if attention_mask is None:
            return None
        return build(*args, attention_mask=attention_mask, **kwargs)  # type: ignore[arg-type]

    return packed_mask


for _base in BASES:
    AttentionInterface.register(attention_name(_base), _packed_attention_over(_base))
    AttentionMaskInterface.register(attention_name(_base), _mask_over(_base))


def use_packed_attention(model: nn.Module, base: str) -> None:
    """Switch `model` (a transformers model loaded with the `base` implementation, sdpa or eager) to the
    packed attention over it."""
    if base not in BASES:
        raise ValueError(f"the packed attention stands in for {' or '.join(BASES)}, not {base}")
    model.set_attn_implementation(attention_name(base))  # type: ignore[operator]
