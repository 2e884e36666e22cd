"""Context parallelism of the student: one micro-batch's sequence cut over the ranks of a context group, each
rank running the model on its chunk, attention all-gathering the keys and values of the whole sequence.

This is the all-gather form Llama 3 was trained with (The Llama 3 Herd of Models, section 3.3.2), not a ring:
each layer gathers K and V (small beside the queries under grouped-query attention), then every rank attends
its own queries to all keys under a mask built from the whole micro-batch, which each rank of the group holds.
torch's `context_parallel` (a ring over the CUDA SDPA kernels only,
torch/distributed/tensor/experimental/_context_parallel/_attention.py:678,918,940 @ torch 2.13) cannot run on
CPU; this one runs on gloo too, so its equality with the unsplit step is tested on CPU.

The sequence is cut zigzag: it is padded to a multiple of 2 x size and cut into 2 x size parts, and rank r
takes parts r and 2 x size - 1 - r. Under a causal mask a query's work grows with its position, so contiguous
chunks would give the last rank about 2 x size - 1 times the first rank's attention; the zigzag pairs evens it
out (the same pairing as torch's `_HeadTailLoadBalancer`). Each chunk's tokens keep their true positions, so
the rotary embeddings are those of the unsplit run.

Gradients: each rank's loss covers the loss positions of its chunk only (disjoint over the group), divided by
the global batch's target count as without context parallelism; the differentiable all-gather sends each
rank's share of the keys' and values' gradients back to the rank that computed them, and FSDP2, sharding over
every rank of the mesh, sums the ranks' parameter gradients as the worker's world-size scale already makes it.
"""

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_gather
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from kubedistill.runtime.losses.output import IGNORE_INDEX
from kubedistill.runtime.student.batch import MicroBatch

ATTENTION = "kubedistill_context_parallel"
"""The attention implementation a context-parallel student runs (`use_context_parallel_attention`)."""


@dataclass(frozen=True)
class ContextChunk(MicroBatch):
    """One rank's chunk of a micro-batch: its tokens at their true positions, the loss positions that fall in
    it (in the micro-batch's order), and what its attention needs to see the whole sequence."""

    key_mask: torch.Tensor | None = None
    """[B, 1, chunk, whole] which of the whole sequence's keys, in the order the all-gather returns them,
    each of the chunk's queries attends to."""
    group: dist.ProcessGroup | None = None
    """The context group the keys and values are gathered over."""
    targets: torch.Tensor | None = None
    """[n] which of the micro-batch's loss positions (and teacher hidden states) are the chunk's."""

    def sequence_bounds(self, device: torch.device) -> dict[str, object]:
        """The model's inputs beside the tokens: a 4-D mask is taken as it is (masking_utils.py:818-819 @
        transformers 5.25), and `context_group` reaches the attention function through the layers' kwargs."""
        assert self.key_mask is not None and self.position_ids is not None
        return {
            "attention_mask": self.key_mask.to(device),
            "position_ids": self.position_ids.to(device),
            "context_group": self.group,
        }


def zigzag_columns(length: int, size: int, rank: int) -> torch.Tensor:
    """The columns rank `rank` of `size` holds of a sequence of `length` (a multiple of 2 x size)."""
    part = length // (2 * size)
    head = torch.arange(rank * part, (rank + 1) * part)
    tail = torch.arange((2 * size - 1 - rank) * part, (2 * size - rank) * part)
    return torch.cat([head, tail])


def chunk_micro_batch(
    batch: MicroBatch, size: int, rank: int, group: dist.ProcessGroup | None = None
) -> ContextChunk:
    """Rank `rank`'s chunk of `batch` (padded rows, or one packed row) in a context group of `size`.

    Algorithms' per-micro-batch alignments (`extras`) and image inputs describe the whole sequence, so such
    micro-batches are not cut.
    """
    if batch.extras or batch.images:
        raise ValueError("context parallelism cuts only micro-batches without extras or images")
    rows, length = batch.input_ids.shape
    whole = math.ceil(length / (2 * size)) * 2 * size
    extend = whole - length
    # The added slots are padding: no key attends to them and they hold no loss position.
    input_ids = nn.functional.pad(batch.input_ids, (0, extend))
    valid = nn.functional.pad(batch.attention_mask, (0, extend)).bool()
    if batch.position_ids is not None:
        last = batch.position_ids[:, -1:]
        positions = torch.cat([batch.position_ids, last + torch.arange(1, extend + 1)], dim=1)
    else:
        # Right-padded rows: a token's position is its column (what the model derives without position_ids).
        positions = torch.arange(whole).unsqueeze(0)
    samples = sample_ids(positions).expand(rows, -1)
    columns = zigzag_columns(whole, size, rank)
    keys = torch.cat([zigzag_columns(whole, size, other) for other in range(size)])
    causal = keys.unsqueeze(0) <= columns.unsqueeze(1)
    same_sample = samples[:, columns].unsqueeze(2) == samples[:, keys].unsqueeze(1)
    key_mask = (causal.unsqueeze(0) & same_sample & valid[:, keys].unsqueeze(1)).unsqueeze(1)
    local = torch.full((whole,), -1, dtype=torch.long)
    local[columns] = torch.arange(len(columns))
    mine = local[batch.columns] >= 0
    return ContextChunk(
        input_ids=input_ids[:, columns],
        attention_mask=valid[:, columns].long(),
        rows=batch.rows[mine],
        columns=local[batch.columns[mine]],
        labels=batch.labels[mine],
        position_ids=positions[:, columns],
        sample_index=None if batch.sample_index is None else batch.sample_index[mine],
        samples=batch.samples,
        key_mask=key_mask,
        group=group,
        targets=mine.nonzero().squeeze(1),
    )


def rank_share(
    batch: MicroBatch, hidden: torch.Tensor | None, group: dist.ProcessGroup
) -> tuple[ContextChunk, torch.Tensor | None]:
    """This rank's chunk of a micro-batch its whole context group holds, with the teacher's hidden states of
    the chunk's loss positions (the teacher answered for the whole micro-batch, in its order of positions)."""
    chunk = chunk_micro_batch(batch, dist.get_world_size(group), dist.get_rank(group), group)
    assert chunk.targets is not None
    return chunk, None if hidden is None else hidden[chunk.targets.to(hidden.device)]


def group_sample_divergences(
    chunks: list[ContextChunk], figures: list[tuple[float | None, ...]], group: dist.ProcessGroup
) -> tuple[tuple[float | None, ...], ...]:
    """Each sample's mean divergence over the whole micro-batch, from each rank's means over its chunk: the
    means times their counts summed over the group (one all-reduce for the step), then divided by the summed
    counts, not the ranks' means averaged. None where any rank had no figure for a position of the sample (an
    algorithm without per-position divergences) or the sample has no target. The group's first rank returns
    them; the others return no figures, so the ranks' figures put together hold each sample once
    (`StepPlan.in_step_order`, whose order lists each context group's samples once)."""
    rows = []
    for chunk, means in zip(chunks, figures, strict=True):
        counts = torch.zeros(chunk.samples, dtype=torch.float64)
        if chunk.sample_index is not None:
            kept = chunk.sample_index[chunk.labels != IGNORE_INDEX]
            counts = torch.bincount(kept, minlength=chunk.samples).to(torch.float64)
        known = torch.tensor([mean is not None for mean in means], dtype=torch.bool)
        values = torch.tensor([0.0 if mean is None else mean for mean in means], dtype=torch.float64)
        # A NaN mean (a non-finite step) stays NaN; a sample with no position on this rank adds nothing.
        totals = torch.where(counts > 0, values * counts, 0.0)
        rows.append(torch.stack([totals, counts, torch.where(known, 0.0, counts)]))
    if not rows:
        return ()
    reduced = torch.cat(rows, dim=1)
    dist.all_reduce(reduced, group=group)
    if dist.get_rank(group) != 0:
        return tuple(() for _ in chunks)
    results: list[tuple[float | None, ...]] = []
    start = 0
    for chunk in chunks:
        totals, counts, unknown = reduced[:, start : start + chunk.samples].tolist()
        start += chunk.samples
        results.append(
            tuple(
                total / count if count and not missing else None
                for total, count, missing in zip(totals, counts, unknown, strict=True)
            )
        )
    return tuple(results)


def sample_ids(positions: torch.Tensor) -> torch.Tensor:
    """[1, L] which sample each token belongs to: a new one wherever a position is not the previous plus 1,
    as transformers finds packed sequences (`find_packed_sequence_indices`, masking_utils.py:756-758); one
    sample for a padded row's 0, 1, 2, ..."""
    previous = torch.cat([positions[:, :1] - 1, positions[:, :-1]], dim=1)
    return (positions != previous + 1).cumsum(dim=1)


def context_parallel_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    context_group: dist.ProcessGroup | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' attention function contract (query [B, H, chunk, D], key and value [B, H_kv, chunk, D],
    after the rotary embeddings): the chunk's queries against every rank's keys and values, gathered with a
    differentiable all-gather (its backward returns each rank its keys' gradients; on gloo through an
    all-to-all, torch/distributed/nn/functional.py:412-423 @ torch 2.13), then transformers' own sdpa."""
    if context_group is None or attention_mask is None:
        raise ValueError(f"{ATTENTION} runs on a ContextChunk (its key mask and context group)")
    keys = torch.cat(all_gather(key.contiguous(), group=context_group), dim=2)
    values = torch.cat(all_gather(value.contiguous(), group=context_group), dim=2)
    return sdpa_attention_forward(module, query, keys, values, attention_mask, **kwargs)  # type: ignore[arg-type]


AttentionInterface.register(ATTENTION, context_parallel_attention)


def use_context_parallel_attention(model: nn.Module) -> None:
    """Switch `model` (a transformers model) to the context-parallel attention. Not being one of
    transformers' mask functions, it gets no mask built by the model (masking_utils.py:830-831): the chunk's
    4-D key mask is passed through as it is."""
    model.set_attn_implementation(ATTENTION)  # type: ignore[operator]
