"""DPO (mode preference): ranking-based distillation, EasyDistill's (the teacher's answer chosen, the
student's own rejected, TRL's DPOTrainer against a frozen copy of the initial student:
modelscope/easydistill @ 934af26 `easydistill/rank/train.py:82-89`, `easydistill/rank/infer.py:211-225`).

Each pair is two samples of one `Sample.group`, chosen then rejected, in one micro-batch. A sequence's
log-likelihood is the sum of its answer tokens' log-probabilities (`losses.label_logprobs`, exact and
chunked, from the hidden states and the head); the reference's comes with the micro-batch
(`extras["reference_logprobs"]`, the initial weights' of the same labels). TRL's sigmoid loss
(huggingface/trl @ f2cd577 `trl/trainer/dpo_trainer.py:1347-1350` the summed log-probabilities,
`:1434-1435` the loss, `:1634-1653` the figures):

    z = beta * ((pi_c - ref_c) - (pi_r - ref_r)),    loss = -log sigmoid(z), averaged over the step's pairs.

CogPO (EasyDistill's DistilQwen2.5-R1 recipe, `recipes/distilqwen_series/distillqwen2.5-r1/cogpo.py:29-37`,
`:107-149`) is this loss with each pair's own beta, from its record (`Sample.beta`); the others train at
spec.preference.beta.
"""

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kubedistill.runtime.algorithms.base import Algorithm, LossInputs
from kubedistill.runtime.losses.label_logprobs import label_logprobs
from kubedistill.runtime.losses.output import LossOutput

if TYPE_CHECKING:
    from kubedistill.runtime.data.sample import Sample

FIGURES = (
    "pairs",
    "loss",
    "sft_loss",
    "margin",
    "reward_margin",
    "accuracy",
    "chosen_reward",
    "rejected_reward",
    "chosen_logp",
    "rejected_logp",
)
"""Sums over a step's pairs; `summarize` makes each a mean per pair (TRL's rewards/*, logps/*)."""


def pair_indices(samples: "list[Sample]") -> tuple[list[int], list[int]]:
    """The chosen and the rejected sample of each pair, by their index in `samples` (a micro-batch): each
    group's first sample is its chosen answer, its second the rejected one."""
    members: dict[int, list[int]] = {}
    for index, sample in enumerate(samples):
        if sample.group is None:
            raise ValueError(f"{sample.source}: a preference sample outside a pair (no Sample.group)")
        members.setdefault(sample.group, []).append(index)
    for group, indices in members.items():
        if len(indices) != 2:
            raise ValueError(f"pair {group} has {len(indices)} answers in its micro-batch, not 2")
    chosen = [indices[0] for indices in members.values()]
    rejected = [indices[1] for indices in members.values()]
    return chosen, rejected


def dpo_loss(
    policy: Tensor, reference: Tensor, chosen: Tensor, rejected: Tensor, beta: Tensor, normalizer: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """The DPO sigmoid loss of the pairs (`chosen[i]`, `rejected[i]`) over sequence log-likelihoods `policy`
    (differentiable) and `reference` ([sequences]), each pair with its `beta` ([pairs]), summed and divided
    by `normalizer` (the step's pairs); and the detached sums of `FIGURES`."""
    pi_c, pi_r = policy[chosen], policy[rejected]
    ref_c, ref_r = reference[chosen].to(policy.dtype), reference[rejected].to(policy.dtype)
    beta = beta.to(policy.dtype)
    z = beta * ((pi_c - ref_c) - (pi_r - ref_r))
    losses = -F.logsigmoid(z)
    chosen_reward = (beta * (pi_c - ref_c)).detach()
    rejected_reward = (beta * (pi_r - ref_r)).detach()
    figures = {
        "pairs": torch.tensor(float(len(chosen)), dtype=policy.dtype, device=policy.device),
        "loss": losses.detach().sum(),
        "margin": (pi_c - pi_r).detach().sum(),
        "reward_margin": (chosen_reward - rejected_reward).sum(),
        "accuracy": (z.detach() > 0).to(policy.dtype).sum(),
        "chosen_reward": chosen_reward.sum(),
        "rejected_reward": rejected_reward.sum(),
        "chosen_logp": pi_c.detach().sum(),
        "rejected_logp": pi_r.detach().sum(),
    }
    return losses.sum() / normalizer, figures


class DPO(Algorithm):
    needs_reference: ClassVar[bool] = True
    figure_names: ClassVar[tuple[str, ...]] = FIGURES

    @classmethod
    def normalizer(cls, samples: "list[Sample]") -> int:
        """The step's pairs: DPO's loss is a mean over pairs (TRL's `per_sequence_loss.mean()`), whatever
        their lengths."""
        return max(1, len({sample.group for sample in samples}))

    @classmethod
    def micro_batch_extras(cls, samples: "list[Sample]") -> dict[str, Tensor]:
        """`chosen` and `rejected` [pairs]: each pair's samples, by their place in the micro-batch (whose
        `sample_index` says which loss positions are whose); `beta` [pairs]: a pair's own beta (CogPO), NaN
        where the spec's applies."""
        if not samples:
            return {}
        chosen, rejected = pair_indices(samples)
        return {
            "chosen": torch.tensor(chosen, dtype=torch.long),
            "rejected": torch.tensor(rejected, dtype=torch.long),
            "beta": torch.tensor([_nan_if_none(samples[i].beta) for i in chosen], dtype=torch.float64),
        }

    def forward(self, inputs: LossInputs) -> LossOutput:
        extras, labels = inputs.extras, inputs.labels
        policy_tokens = label_logprobs(
            inputs.student_hidden, inputs.student_head, labels, self.context.config.chunk_size
        )
        if "chosen" not in extras or inputs.sample_index is None:
            # A rank's placeholder micro-batch (no samples): a zero that still reaches the head's gradient.
            zero = policy_tokens.sum() * 0.0
            return _output(zero, zero.detach(), labels, {name: zero.detach() for name in FIGURES})
        sequence = inputs.sample_index.to(labels.device)
        sequences = int(sequence.max()) + 1 if sequence.numel() else 0
        policy = policy_tokens.new_zeros(sequences).index_add(0, sequence, policy_tokens)
        reference_tokens = extras["reference_logprobs"].to(policy_tokens.device, policy_tokens.dtype)
        reference = policy.new_zeros(sequences).index_add(0, sequence, reference_tokens)
        chosen, rejected = extras["chosen"].to(policy.device), extras["rejected"].to(policy.device)
        own = extras["beta"].to(policy.device, policy.dtype)
        beta = torch.where(own.isnan(), self.context.preference.beta, own)
        loss, figures = dpo_loss(policy, reference, chosen, rejected, beta, inputs.normalizer)
        # The chosen answers' negative log-likelihood per token, pair by pair (`preference.sftWeight`).
        tokens = torch.bincount(sequence, minlength=sequences).to(policy.dtype)
        sft = (-policy[chosen] / tokens[chosen].clamp_min(1.0)).sum()
        weight = self.context.preference.sft_weight
        if weight:
            loss = loss + weight * sft / inputs.normalizer
        # `loss` is the step's objective (DPO's plus the weighted term), `sft_loss` the term unweighted.
        figures = {**figures, "loss": figures["loss"] + weight * sft.detach(), "sft_loss": sft.detach()}
        return _output(loss, -policy_tokens.detach().sum(), labels, figures)

    @classmethod
    def summarize(cls, sums: Mapping[str, float]) -> dict[str, float]:
        pairs = sums.get("pairs", 0.0)
        if not pairs:
            return {}
        return {name: sums.get(name, 0.0) / pairs for name in FIGURES if name != "pairs"}


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def _output(loss: Tensor, nll_sum: Tensor, labels: Tensor, figures: Mapping[str, Tensor]) -> LossOutput:
    """`ce_sum` keeps its meaning (the student's NLL of the labels, chosen and rejected alike); no teacher
    runs in training, so `kd_sum` is 0."""
    return LossOutput(
        loss=loss,
        kd_sum=torch.zeros_like(nll_sum),
        ce_sum=nll_sum,
        num_tokens=int((labels != -100).sum()),
        figures=figures,
    )
