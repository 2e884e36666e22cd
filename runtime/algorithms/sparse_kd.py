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
        loss positions (sample by sample, padded or packed alike: `MicroBatch.from_samples`)."""
        if not samples:
            return {}
        ids = [sample.teacher_top_ids for sample in samples]
        values = [sample.teacher_top_logprobs for sample in samples]
        if any(each is None for each in ids):
            raise ValueError("sparseKd: a sample without the teacher's top-k (Sample.teacher_top_ids)")
        return {
            "top_ids": torch.from_numpy(np.concatenate(ids)).long(),  # type: ignore[arg-type]
            "top_logprobs": torch.from_numpy(np.concatenate(values)),  # type: ignore[arg-type]
        }

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
