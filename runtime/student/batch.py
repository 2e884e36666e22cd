"""A micro-batch as the student ranks receive it: tokens (right-padded rows, or one packed row) and loss
positions, built on the driver.

A packed micro-batch (`training.packing`) puts its samples one after the other in a single row, with no
padding: `position_ids` restart at 0 for each sample, and the model is called without an attention mask, from
which transformers builds a block-diagonal causal mask (each token attends only to the earlier tokens of its
own sample). Loss positions, labels and their order are those of the padded micro-batch of the same samples,
so the teacher's hidden states (returned per sample, in order), the losses and the algorithms' alignments
(`Algorithm.micro_batch_extras`) pair with them unchanged.
"""

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from kubedistill.runtime.data.batching import pad_right
from kubedistill.runtime.data.images import batch_image_inputs
from kubedistill.runtime.data.sample import Sample


@dataclass(frozen=True)
class MicroBatch:
    input_ids: torch.Tensor
    """[B, L] right-padded token ids."""
    attention_mask: torch.Tensor
    """[B, L] 1 on tokens, 0 on padding (all ones in a packed row)."""
    rows: torch.Tensor
    """[n] batch row of each loss position."""
    columns: torch.Tensor
    """[n] position within its row; its hidden state predicts the label."""
    labels: torch.Tensor
    """[n] the target token that follows each loss position."""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """The algorithm's own per-micro-batch tensors (`Algorithm.micro_batch_extras`)."""
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    """A vision-language student's image inputs for the backbone (`data.images.batch_image_inputs`); empty
    when no sample has images."""
    position_ids: torch.Tensor | None = None
    """[1, L] each token's position within its own sample, in a packed row; None for padded rows (the model
    derives the positions from the attention mask)."""
    sample_index: torch.Tensor | None = None
    """[n] the sample (its place in the list given to `from_samples`) of each loss position, padded or
    packed alike: what reduces a per-position figure per sample (`losses.output.per_sample_means`)."""
    samples: int = 0
    """How many samples the micro-batch holds (0: the placeholder)."""

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    @property
    def num_targets(self) -> int:
        return int(self.labels.numel())

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum().item())

    @property
    def num_slots(self) -> int:
        """Token slots the forward computes, padding included."""
        return int(self.input_ids.numel())

    @classmethod
    def from_samples(
        cls,
        samples: list[Sample],
        pad_id: int,
        extras: dict[str, torch.Tensor] | None = None,
        packed: bool = False,
    ) -> "MicroBatch":
        """Samples for one forward pass, right-padded or (`packed`) in one row; with no samples, a one-token
        placeholder without targets.

        Samples with images are never packed: a vision-language model's positions (Qwen2-VL's multimodal
        rotary positions) are computed from the whole row and its attention mask, not per sample.

        A rank with fewer micro-batches than the others still has to take part in every FSDP2 collective,
        so it runs the placeholder, whose loss is zero but whose backward reaches every parameter.
        """
        if not samples:
            return cls(
                input_ids=torch.full((1, 1), pad_id, dtype=torch.long),
                attention_mask=torch.ones((1, 1), dtype=torch.long),
                rows=torch.zeros(0, dtype=torch.long),
                columns=torch.zeros(0, dtype=torch.long),
                labels=torch.zeros(0, dtype=torch.long),
            )
        if packed and all(s.images is None for s in samples):
            return cls._packed(samples, extras)
        input_ids, attention_mask = pad_right([s.input_ids for s in samples], pad_id)
        rows, columns, labels = [], [], []
        for row, sample in enumerate(samples):
            positions = sample.loss_positions()
            rows.extend([row] * len(positions))
            columns.extend(positions)
            labels.extend(sample.labels())
        rows_tensor = torch.tensor(rows, dtype=torch.long)
        return cls(
            input_ids=input_ids,
            attention_mask=attention_mask,
            rows=rows_tensor,
            columns=torch.tensor(columns, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long),
            extras=extras or {},
            images=batch_image_inputs([s.images for s in samples], input_ids),
            sample_index=rows_tensor,
            samples=len(samples),
        )

    @classmethod
    def _packed(cls, samples: list[Sample], extras: dict[str, torch.Tensor] | None) -> "MicroBatch":
        lengths = [len(s.input_ids) for s in samples]
        offsets = [0, *itertools.accumulate(lengths)][:-1]
        columns, labels, sample_index = [], [], []
        for index, (offset, sample) in enumerate(zip(offsets, samples, strict=True)):
            positions = sample.loss_positions()
            columns.extend(offset + position for position in positions)
            labels.extend(sample.labels())
            sample_index.extend([index] * len(positions))
        input_ids = torch.from_numpy(np.concatenate([s.input_ids for s in samples])).long().unsqueeze(0)
        return cls(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            rows=torch.zeros(len(columns), dtype=torch.long),
            columns=torch.tensor(columns, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long),
            extras=extras or {},
            position_ids=torch.cat([torch.arange(length) for length in lengths]).unsqueeze(0),
            sample_index=torch.tensor(sample_index, dtype=torch.long),
            samples=len(samples),
        )
