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


def groups_of(samples: Sequence[Sample]) -> list[list[Sample]]:
    """The samples as the units batching never cuts: each run of consecutive samples with one `Sample.group`
    id (a DPO pair, a GRPO prompt's answers), and each sample without one on its own."""
    units: list[list[Sample]] = []
    for sample in samples:
        if units and sample.group is not None and units[-1][-1].group == sample.group:
            units[-1].append(sample)
        else:
            units.append([sample])
    return units


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

    A group of samples (`groups_of`: a loss over several sequences at once) is one unit throughout: it goes
    whole to one rank and one micro-batch, in its order; `micro_batch_size` then counts the sequences of the
    whole groups a micro-batch takes (at least one group), and a group's tokens are its cost and its size.

    Every rank gets the same number of micro-batches, padded with empty ones: FSDP2's collectives deadlock
    when one rank runs a forward the others do not. A rank must still take part in an empty micro-batch.
    """
    if ranks < 1:
        raise ValueError(f"ranks must be at least 1, got {ranks}")
    units = groups_of(samples)
    if max_tokens is not None:
        per_rank = [
            (_first_fit if packed else _pack)(
                sorted((units[i] for i in shard), key=lambda unit: -_longest(unit)), max_tokens
            )
            for shard in balance([_tokens(unit) for unit in units], ranks)
        ]
    elif micro_batch_size is not None:
        size, extra = divmod(len(units), ranks)
        bounds = [r * size + min(r, extra) for r in range(ranks + 1)]
        per_rank = [_chunks(units[bounds[r] : bounds[r + 1]], micro_batch_size) for r in range(ranks)]
    else:
        raise ValueError("set micro_batch_size or max_tokens")
    depth = max(len(batches) for batches in per_rank)
    return [batches + [[] for _ in range(depth - len(batches))] for batches in per_rank]


def strided_micro_batches(samples: Sequence[Sample], ranks: int, size: int) -> list[list[list[Sample]]]:
    """An evaluation's micro-batches, [rank][micro_batch]: the units (`groups_of`) dealt to the ranks in
    turn and cut into micro-batches of `size` sequences as `shard_micro_batches` cuts them; every rank gets
    the same number of micro-batches (FSDP2's collectives), short ranks empty ones."""
    units = groups_of(samples)
    per_rank = [_chunks(units[rank::ranks], size) for rank in range(ranks)]
    depth = max(len(batches) for batches in per_rank)
    return [batches + [[] for _ in range(depth - len(batches))] for batches in per_rank]


def _tokens(unit: Sequence[Sample]) -> int:
    return sum(len(sample.input_ids) for sample in unit)


def _longest(unit: Sequence[Sample]) -> int:
    return max(len(sample.input_ids) for sample in unit)


def _chunks(units: Sequence[list[Sample]], size: int) -> list[list[Sample]]:
    """Whole units, in order, into micro-batches of `size` sequences; a micro-batch takes one more unit while
    it holds fewer than `size`, so a group larger than `size` is a micro-batch of its own."""
    if size < 1:
        raise ValueError(f"micro_batch_size must be at least 1, got {size}")
    batches: list[list[Sample]] = []
    for unit in units:
        if batches and len(batches[-1]) + len(unit) <= size:
            batches[-1].extend(unit)
        else:
            batches.append(list(unit))
    return batches


def _pack(longest_first: list[list[Sample]], max_tokens: int) -> list[list[Sample]]:
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    batches: list[list[Sample]] = []
    for unit in longest_first:
        # Longest first, so the batch's first unit sets its padded width.
        if batches and _longest(batches[-1]) * (len(batches[-1]) + len(unit)) <= max_tokens:
            batches[-1].extend(unit)
        else:
            batches.append(list(unit))
    return batches


def _first_fit(longest_first: list[list[Sample]], max_tokens: int) -> list[list[Sample]]:
    """Whole units into rows of at most `max_tokens` tokens: no sample is ever cut across rows (the
    attention of a packed row stays within each sample, and a cut one would lose its beginning)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    batches: list[list[Sample]] = []
    loads: list[int] = []
    for unit in longest_first:
        length = _tokens(unit)
        row = next((i for i, load in enumerate(loads) if load + length <= max_tokens), None)
        if row is None:
            batches.append(list(unit))
            loads.append(length)
        else:
            batches[row].extend(unit)
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
