"""A micro-batch as the student ranks receive it: padded tokens and loss positions, built on the driver."""

from dataclasses import dataclass, field

import torch

from kubedistill.runtime.data.batching import pad_right
from kubedistill.runtime.data.images import batch_image_inputs
from kubedistill.runtime.data.sample import Sample


@dataclass(frozen=True)
class MicroBatch:
    input_ids: torch.Tensor
    """[B, L] right-padded token ids."""
    attention_mask: torch.Tensor
    """[B, L] 1 on tokens, 0 on padding."""
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

    @property
    def num_targets(self) -> int:
        return int(self.labels.numel())

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum().item())

    @classmethod
    def from_samples(
        cls, samples: list[Sample], pad_id: int, extras: dict[str, torch.Tensor] | None = None
    ) -> "MicroBatch":
        """Samples packed for one forward pass; with no samples, a one-token placeholder without targets.

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
        input_ids, attention_mask = pad_right([s.input_ids for s in samples], pad_id)
        rows, columns, labels = [], [], []
        for row, sample in enumerate(samples):
            positions = sample.loss_positions()
            rows.extend([row] * len(positions))
            columns.extend(positions)
            labels.extend(sample.labels())
        return cls(
            input_ids=input_ids,
            attention_mask=attention_mask,
            rows=torch.tensor(rows, dtype=torch.long),
            columns=torch.tensor(columns, dtype=torch.long),
            labels=torch.tensor(labels, dtype=torch.long),
            extras=extras or {},
            images=batch_image_inputs([s.images for s in samples], input_ids),
        )
