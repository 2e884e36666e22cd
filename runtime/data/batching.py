"""Which samples go into which optimizer step, student rank and micro-batch.

Everything here is a pure function of its arguments (seeded where random), so every process of a job, and a
job resumed from a checkpoint, forms the same batches.
"""

import heapq
import random
from collections.abc import Sequence

import torch

from kubedistill.runtime.data.sample import Sample


def steps_per_epoch(num_samples: int, global_batch_size: int) -> int:
    """Full global batches in one pass (what an on-policy epoch's rounds of prompts are)."""
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be at least 1, got {global_batch_size}")
    steps = num_samples // global_batch_size
    if steps == 0:
        raise ValueError(
            f"{num_samples} samples do not fill one global batch of {global_batch_size} "
            "(spec.training.globalBatchSize); lower it or add data"
        )
    return steps


def batches_per_epoch(num_samples: int, global_batch_size: int) -> int:
    """Global batches in one pass over every sample: the full ones, and the remainder's smaller one."""
    steps_per_epoch(num_samples, global_batch_size)
    return -(-num_samples // global_batch_size)


def global_batches(num_samples: int, global_batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Sample indices of each step of `epoch`: a permutation fixed by (seed, epoch), cut into global batches.

    Every sample is in one batch an epoch: where the global batch does not divide the samples, the last batch
    is the smaller remainder (the loss of any step is normalised by its own target tokens, so a smaller one
    is the same mean over fewer sequences). On-policy rounds take only the full ones (`steps_per_epoch`).
    """
    batches = batches_per_epoch(num_samples, global_batch_size)
    order = list(range(num_samples))
    # A string seed is hashed whole (sha512), so (seed, epoch) pairs never collide the way seed + epoch would.
    random.Random(f"kubedistill:{seed}:{epoch}").shuffle(order)
    return [order[step * global_batch_size : (step + 1) * global_batch_size] for step in range(batches)]


def balance(costs: Sequence[int], bins: int) -> list[list[int]]:
    """Indices of `costs` per bin: the costliest first, each to the least-loaded bin (ties: the lowest bin).

    Greedy longest-processing-time: within 4/3 of the best possible maximum load. Each bin's indices come in
    ascending order.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    loads = [(0, b) for b in range(bins)]
    assigned: list[list[int]] = [[] for _ in range(bins)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, b = heapq.heappop(loads)
        assigned[b].append(index)
        heapq.heappush(loads, (load + costs[index], b))
    return [sorted(indices) for indices in assigned]


def shard_micro_batches(
    samples: Sequence[Sample],
    ranks: int,
    micro_batch_size: int | None,
    max_tokens: int | None,
    packed: bool = False,
) -> list[list[list[Sample]]]:
    """The micro-batches of each student rank for one global batch, indexed [rank][micro_batch].

    With `max_tokens` (dynamic batching; it wins over `micro_batch_size`, as the spec says) samples are
    balanced over ranks by token count and packed, longest first, into micro-batches whose size stays
    within the budget: padded (`packed` false), the longest times the count; packed into one row
    (`MicroBatch.from_samples(packed=True)`), the sum of the lengths, each sample going to the first
    micro-batch it fits (first-fit decreasing). A sample longer than the budget gets a micro-batch of its
    own. Otherwise each rank gets a contiguous `len / ranks` samples, cut into `micro_batch_size` pieces (the
    first ranks one more where they do not split evenly: an epoch's last, smaller batch).

    Every rank gets the same number of micro-batches, padded with empty ones: FSDP2's collectives deadlock
    when one rank runs a forward the others do not. A rank must still take part in an empty micro-batch.
    """
    if ranks < 1:
        raise ValueError(f"ranks must be at least 1, got {ranks}")
    if max_tokens is not None:
        per_rank = [
            (_first_fit if packed else _pack)(
                sorted((samples[i] for i in shard), key=lambda s: -len(s.input_ids)), max_tokens
            )
            for shard in balance([len(s.input_ids) for s in samples], ranks)
        ]
    elif micro_batch_size is not None:
        size, extra = divmod(len(samples), ranks)
        bounds = [r * size + min(r, extra) for r in range(ranks + 1)]
        per_rank = [_chunks(samples[bounds[r] : bounds[r + 1]], micro_batch_size) for r in range(ranks)]
    else:
        raise ValueError("set micro_batch_size or max_tokens")
    depth = max(len(batches) for batches in per_rank)
    return [batches + [[] for _ in range(depth - len(batches))] for batches in per_rank]


def _chunks(samples: Sequence[Sample], size: int) -> list[list[Sample]]:
    if size < 1:
        raise ValueError(f"micro_batch_size must be at least 1, got {size}")
    return [list(samples[start : start + size]) for start in range(0, len(samples), size)]


def _pack(longest_first: list[Sample], max_tokens: int) -> list[list[Sample]]:
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    batches: list[list[Sample]] = []
    for sample in longest_first:
        # Longest first, so the batch's first sample sets its padded width.
        if batches and len(batches[-1][0].input_ids) * (len(batches[-1]) + 1) <= max_tokens:
            batches[-1].append(sample)
        else:
            batches.append([sample])
    return batches


def _first_fit(longest_first: list[Sample], max_tokens: int) -> list[list[Sample]]:
    """Whole samples into rows of at most `max_tokens` tokens: no sample is ever cut across rows (the
    attention of a packed row stays within each sample, and a cut one would lose its beginning)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    batches: list[list[Sample]] = []
    loads: list[int] = []
    for sample in longest_first:
        length = len(sample.input_ids)
        row = next((i for i, load in enumerate(loads) if load + length <= max_tokens), None)
        if row is None:
            batches.append([sample])
            loads.append(length)
        else:
            batches[row].append(sample)
            loads[row] += length
    return batches


def pad_right(
    sequences: list[list[int]] | list[tuple[int, ...]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, L], attention_mask [B, L]) with L the longest sequence; padding is masked out."""
    length = max((len(s) for s in sequences), default=0)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask
