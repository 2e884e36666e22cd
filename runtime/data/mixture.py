"""Which records of each source an epoch of a weighted mixture (`spec.data.mixture`) trains on.

An epoch holds as many samples as all the sources together (so it has as many steps as without weights);
source i supplies round(w_i / sum(w) x total) of them, by largest remainders so the shares add up exactly.
Each source is read as an endless stream of shuffles of its own records, one shuffle after another, each
seeded by (seed, source, shuffle number); epoch e takes the stream's positions [e x share, (e + 1) x share).
So a source given more than it holds repeats records (each one about equally often), one given fewer than
it holds trains on other records each epoch, going on where the last epoch stopped, and every record of it
comes round within ceil(size / share) epochs.

Everything is a pure function of (sizes, weights, seed, epoch): every process, and a job resumed mid-epoch,
draws the same samples. HF `datasets.interleave_datasets` (KDFlow's and OpenRLHF's mixtures) instead draws
source by source at random until every source is used up (`all_exhausted`), so its epoch's length depends on
the weights; here it does not.
"""

import random
from dataclasses import dataclass
from fractions import Fraction


def shares(sizes: list[int], weights: list[float]) -> list[int]:
    """Samples each source supplies an epoch: the total of `sizes` split by `weights`, largest remainder
    first (ties: the earlier source), so that they add up to the total exactly."""
    if len(sizes) != len(weights) or not sizes:
        raise ValueError(f"one weight per source: {len(sizes)} sources, {len(weights)} weights")
    if any(weight <= 0 for weight in weights):
        raise ValueError(f"weights must be positive, got {weights}")
    total = sum(sizes)
    # Exact fractions: a float quota such as 0.7 x 10 lands a hair under 7 and would lose its whole part.
    exact = [Fraction(weight) for weight in weights]
    quotas = [total * weight / sum(exact) for weight in exact]
    floors = [int(quota) for quota in quotas]
    left = total - sum(floors)
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(quotas[i] - floors[i]), i))
    for i in by_remainder[:left]:
        floors[i] += 1
    return floors


def shuffle_of(size: int, seed: int, source: int, number: int) -> list[int]:
    """The `number`-th shuffle of a source's `size` records."""
    order = list(range(size))
    # A string seed is hashed whole (sha512), as `batching.global_batches` seeds its shuffles.
    random.Random(f"kubedistill:mixture:{seed}:{source}:{number}").shuffle(order)
    return order


def drawn(size: int, share: int, seed: int, source: int, epoch: int) -> list[int]:
    """The records (indices into the source) that the source supplies in `epoch`: its stream's positions
    [epoch x share, (epoch + 1) x share)."""
    start, end = epoch * share, (epoch + 1) * share
    taken: list[int] = []
    number = start // size
    while number * size < end:
        order = shuffle_of(size, seed, source, number)
        taken += order[max(start - number * size, 0) : end - number * size]
        number += 1
    return taken


@dataclass(frozen=True)
class Mixture:
    """The sources of a training set held end to end (source 0's samples first), and what each supplies."""

    sizes: tuple[int, ...]
    """Samples each source holds."""
    weights: tuple[float, ...]
    seed: int

    @property
    def shares(self) -> list[int]:
        """Samples each source supplies an epoch."""
        return shares(list(self.sizes), list(self.weights))

    def epoch(self, epoch: int) -> list[int]:
        """The samples `epoch` trains on, as indices into all the sources' samples end to end: source by
        source, each its `drawn` records; `batching.global_batches` then shuffles them together."""
        chosen: list[int] = []
        offset = 0
        for source, (size, share) in enumerate(zip(self.sizes, self.shares, strict=True)):
            chosen += [offset + i for i in drawn(size, share, self.seed, source, epoch)]
            offset += size
        return chosen


def share_lines(fields: list[str], mixture: Mixture) -> list[str]:
    """One line per source: the samples it holds and those it supplies each epoch."""
    lines = []
    for field, size, share in zip(fields, mixture.sizes, mixture.shares, strict=True):
        if share == 0:
            how = "its weight is too small for one sample of an epoch"
        elif share > size:
            how = "repeating its samples"
        elif share == size:
            how = "every sample once"
        else:
            how = f"others each epoch, every sample within {-(-size // share)} epochs"
        lines.append(f"{field}: {size} samples, {share} of each epoch's {sum(mixture.sizes)} ({how})")
    return lines
