"""How many tokens the fused loss takes per chunk: the spec's `lossChunkSize`, or a size chosen from the
shapes so that a chunk's logits stay within a fixed multiple of the hidden states they come from.

The rule is Liger-Kernel's for its fused linear cross-entropy (linkedin/Liger-Kernel @ 00eba634,
`src/liger_kernel/ops/fused_linear_cross_entropy.py`, `fused_linear_cross_entropy_forward`, at "Bound
transient logits to C x BT x H"): inc_factor = ceil(V / (C * H)), chunk = next_power_of_2(ceil(BT /
inc_factor)), at most BT. Liger's default C is 1; here it is `MEMORY_MULTIPLE`, because each chunk also
reads the [V x d] weights and rewrites the [V x d] weight gradient once, and with Liger's C = 1 a chunk of
`bench.loss`'s shapes (2048 tokens, d 1024, V 151936) is 16 tokens: those passes over the weights then
dominate (3.7x the CPU time of 128-token chunks, measured at 256 tokens), where at C = 8 (128 tokens)
the loss's transient memory is still a small fraction of the full logits' (`bench.loss` reports it).
"""

import math

MEMORY_MULTIPLE = 8
"""Liger's C: a chunk's [chunk x V] logits are at most about C times the [tokens x d] hidden states."""


def memory_bound_chunk(tokens: int, hidden: int, vocab: int) -> int:
    """Liger's chunk for `tokens` hidden states of width `hidden` against a `vocab`-row head."""
    if tokens <= 0:
        return 1
    inc_factor = math.ceil(vocab / (MEMORY_MULTIPLE * hidden))
    chunk = 1 << (math.ceil(tokens / inc_factor) - 1).bit_length()
    return min(chunk, tokens)


def chunk_rows(chunk_size: int | None, tokens: int, hidden: int, vocab: int) -> int:
    """The spec's chunk when it sets one, else `memory_bound_chunk`."""
    return chunk_size if chunk_size is not None else memory_bound_chunk(tokens, hidden, vocab)
