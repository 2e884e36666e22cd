"""Sparse KD (mode sft): the student learns a hosted teacher's stored top-k log-probabilities
(spec.generation.topLogprobs), the divergence over its top-k plus the tail's mass (`losses.sparse`), mixed
with the cross-entropy on the sampled tokens by kdRatio. No teacher runs: the targets come with the samples
(`Sample.teacher_top_ids`), so teacher_hidden is None here as in sft."""

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from kubedistill.runtime.algorithms.base import Algorithm, LossInputs
from kubedistill.runtime.losses.output import LossOutput
from kubedistill.runtime.losses.sparse import fused_sparse_kd_loss

if TYPE_CHECKING:
    from kubedistill.runtime.data.sample import Sample


class SparseKD(Algorithm):
    sparse_targets: ClassVar[bool] = True

    @classmethod
    def micro_batch_extras(cls, samples: "list[Sample]") -> dict[str, torch.Tensor]:
        """Each loss position's top-k ids and log-probabilities ([targets, k]), in the micro-batch's order of
        loss positions (sample by sample, padded or packed alike: `MicroBatch.from_samples`). A sample without
        them (held-out data, spec.data.eval, that no endpoint scored) gets empty rows: cross-entropy alone."""
        if not samples:
            return {}
        k = max((s.teacher_top_ids.shape[1] for s in samples if s.teacher_top_ids is not None), default=1)
        ids = np.full((sum(s.num_targets for s in samples), k), -1, dtype=np.int64)
        values = np.zeros(ids.shape, dtype=np.float32)
        row = 0
        for sample in samples:
            if sample.teacher_top_ids is not None and sample.teacher_top_logprobs is not None:
                width = sample.teacher_top_ids.shape[1]
                ids[row : row + sample.num_targets, :width] = sample.teacher_top_ids
                values[row : row + sample.num_targets, :width] = sample.teacher_top_logprobs
            row += sample.num_targets
        return {"top_ids": torch.from_numpy(ids), "top_logprobs": torch.from_numpy(values)}

    def forward(self, inputs: LossInputs) -> LossOutput:
        config, extras = self.context.config, inputs.extras
        top_ids = extras.get("top_ids")
        top_logprobs = extras.get("top_logprobs")
        if top_ids is None or top_logprobs is None:
            # A rank's placeholder micro-batch (no samples): no targets, nothing to compare.
            top_ids = inputs.labels.new_full((inputs.labels.shape[0], 1), -1)
            top_logprobs = top_ids.to(torch.float32)
        return fused_sparse_kd_loss(
            inputs.student_hidden,
            inputs.student_head,
            inputs.labels,
            top_ids,
            top_logprobs,
            kd_ratio=config.kd_ratio,
            add_tail=self.context.distillation.loss_add_tail,
            normalizer=inputs.normalizer,
            chunk_size=config.chunk_size,
        )
