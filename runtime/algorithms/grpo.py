"""GRPO with the teacher as the reward (mode reinforcement): the student samples several answers to each
prompt on the rollout engines, the job's teacher judges each answer by its mean log-probability per answer
token, and the student moves toward the answers its group judged better, held near its initial self.

TRL's GRPOTrainer (trl 1.16.0, `trl/trainer/grpo_trainer.py`) with its defaults beside two of ours:
- advantages (`_generate_and_score_completions`, :2765-2787, scale_rewards "group"): A_i = (r_i - mean(r_g))
  / (std(r_g) + 1e-4) over the samples g of sample i's prompt, the std with Bessel's correction
  (`trl/trainer/utils.py:1037-1043`, `nanstd`), a group of one has none (A = 0);
- the loss (`_compute_loss`, :3085-3150): per token -A_i * exp(logp - logp_old) + beta * k3, where
  k3 = exp(ref - logp) - (ref - logp) - 1 (:3100-3102) is the KL estimator to the reference. One optimiser
  step a round (a rule makes rollout.batchSize x samplesPerPrompt the global batch) makes the samples' weights
  the current ones, so logp_old = logp.detach() (TRL's own case without importance sampling, :3061-3066), the
  ratio is 1 and PPO's clip never acts: d(per-token loss)/d(logp) = -A_i + beta * (1 - exp(ref - logp));
- token-level normalisation, TRL's default loss_type "dapo" (:3168-3174): the per-token losses summed over
  the global batch, divided by its answer tokens (`Algorithm.normalizer`'s default).
Ours: the reward is the teacher's likelihood of the answer, computed here from the teacher's hidden states and
head (no logits cross the network), not a reward function's; and beta is spec.reinforcement.klCoef (0.04,
the GRPO paper's, where TRL's default 0.0 drops the reference).

Likelihood rewards favour short and repetitive answers (a token the teacher finds likely once it is likely
again); the KL to the reference is what holds the student back from them.
"""

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from kubedistill.api.job import SpecError
from kubedistill.api.spec import DistillationJobSpec
from kubedistill.runtime.algorithms.base import Algorithm, AlgorithmContext, LossInputs
from kubedistill.runtime.data.alignment import same_vocabulary
from kubedistill.runtime.losses.label_logprobs import label_logprobs
from kubedistill.runtime.losses.output import IGNORE_INDEX, LossOutput

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from kubedistill.runtime.data.sample import Sample

ADVANTAGE_EPSILON = 1e-4
"""Added to the group's std before dividing (TRL, grpo_trainer.py:2787)."""

REFERENCE_LOGPROBS = "reference_logprobs"
"""The extra holding the frozen initial student's log-probability of each label (`needs_reference`)."""


def check_teacher_vocabulary(
    spec: DistillationJobSpec, student: "PreTrainedTokenizerBase", teacher: "PreTrainedTokenizerBase"
) -> None:
    """The reward reads the teacher's probability of each of the student's tokens, by id: `SpecError` naming
    the teacher's tokenizer (or model) where its vocabulary is not the student's."""
    if same_vocabulary(student, teacher):
        return
    field = (
        "spec.teacher.tokenizer"
        if spec.teacher is not None and spec.teacher.tokenizer
        else "spec.teacher.model"
    )
    raise SpecError(
        field,
        f"{teacher.name_or_path} has another vocabulary than the student's {student.name_or_path}: mode "
        "reinforcement's reward is the teacher's probability of the student's own tokens, so the teacher "
        "needs the student's vocabulary",
    )


def group_advantages(rewards: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """Each sample's advantage within its group, and its group's reward std (Bessel-corrected; 0 for a group
    of one): rewards [samples], groups [samples] ids 0..G-1."""
    count = groups.max().item() + 1 if groups.numel() else 0
    sizes = torch.zeros(count, dtype=rewards.dtype, device=rewards.device).index_add_(
        0, groups, torch.ones_like(rewards)
    )
    means = torch.zeros_like(sizes).index_add_(0, groups, rewards) / sizes.clamp_min(1)
    gaps = rewards - means[groups]
    squares = torch.zeros_like(sizes).index_add_(0, groups, gaps.square())
    stds = torch.where(sizes > 1, (squares / (sizes - 1).clamp_min(1)).sqrt(), 0.0)[groups]
    return gaps / (stds + ADVANTAGE_EPSILON), stds


class GRPO(Algorithm):
    needs_reference: ClassVar[bool] = True
    figure_names: ClassVar[tuple[str, ...]] = (
        "samples",
        "tokens",
        "reward_sum",
        "reward_square_sum",
        "zero_std_samples",
        "kl_sum",
        "loss_sum",
    )

    def __init__(self, context: AlgorithmContext) -> None:
        super().__init__(context)
        self.kl_coef = context.reinforcement.kl_coef
        """GRPO's beta (spec.reinforcement.klCoef): the weight of the per-token KL to the reference."""

    @classmethod
    def micro_batch_extras(cls, samples: "list[Sample]") -> dict[str, Tensor]:
        """`sample_group` [samples]: each sample's group renumbered 0.. in the micro-batch (a sample without
        a group is a group of one); which loss positions are each sample's is the micro-batch's own
        `sample_index`."""
        if not samples:
            return {}
        numbers: dict[tuple[str, int], int] = {}
        groups = [
            numbers.setdefault(("group", s.group) if s.group is not None else ("alone", i), len(numbers))
            for i, s in enumerate(samples)
        ]
        return {"sample_group": torch.tensor(groups, dtype=torch.long)}

    @classmethod
    def summarize(cls, sums: Mapping[str, float]) -> dict[str, float]:
        """TRL's figures (grpo_trainer.py:2828-2830 and :3268): the mean reward and the std of the step's
        rewards (Bessel-corrected, as `nanstd`), the share of samples whose group's rewards were all equal (no
        signal), the mean KL to the reference per token; and the loss per token."""
        samples, tokens = sums.get("samples", 0.0), sums.get("tokens", 0.0)
        if samples <= 0 or tokens <= 0:
            return {}
        mean = sums.get("reward_sum", 0.0) / samples
        spread = sums.get("reward_square_sum", 0.0) - samples * mean * mean
        return {
            "loss": sums.get("loss_sum", 0.0) / tokens,
            "reward": mean,
            "reward_std": math.sqrt(max(spread, 0.0) / (samples - 1)) if samples > 1 else 0.0,
            "frac_reward_zero_std": sums.get("zero_std_samples", 0.0) / samples,
            "kl_to_reference": sums.get("kl_sum", 0.0) / tokens,
        }

    def forward(self, inputs: LossInputs) -> LossOutput:
        extras = inputs.extras
        position_sample, sample_group = inputs.sample_index, extras.get("sample_group")
        reference = extras.get(REFERENCE_LOGPROBS)
        teacher_hidden, teacher_head = inputs.teacher_hidden, inputs.teacher_head
        if inputs.labels.numel() == 0:
            return self._placeholder(inputs)
        if position_sample is None or sample_group is None or reference is None:
            raise ValueError(
                "GRPO needs its micro-batch extras, each position's sample and the reference's "
                "log-probabilities (`needs_reference`)"
            )
        if teacher_hidden is None or teacher_head is None:
            raise ValueError(
                "GRPO's reward is the teacher's: a micro-batch with samples needs its hidden states"
            )
        labels, chunk = inputs.labels, self.context.config.chunk_size
        kept = labels != IGNORE_INDEX
        with torch.no_grad():
            teacher = label_logprobs(teacher_hidden.to(teacher_head.dtype), teacher_head, labels, chunk)
        logp = label_logprobs(inputs.student_hidden, inputs.student_head, labels, chunk)
        samples = sample_group.shape[0]
        counts = torch.bincount(position_sample[kept], minlength=samples).to(teacher.dtype)
        sums = teacher.new_zeros(samples).index_add_(0, position_sample, teacher)
        rewards = sums / counts.clamp_min(1)
        advantages, stds = group_advantages(rewards, sample_group)
        gap = reference.to(logp.dtype) - logp
        kl = gap.exp() - gap - 1.0
        # TRL's ratio exp(logp - logp_old) (grpo_trainer.py:3095), on-policy: 1, with the gradient of logp.
        policy = -advantages[position_sample] * torch.exp(logp - logp.detach())
        per_token = torch.where(kept, policy + self.kl_coef * kl, 0.0)
        loss = per_token.sum() / inputs.normalizer
        teacher_nll = torch.where(kept, -teacher, 0.0)
        zero_std = torch.isclose(stds, torch.zeros_like(stds))
        return LossOutput(
            loss=loss,
            kd_sum=teacher_nll.sum(),
            ce_sum=torch.where(kept, -logp.detach(), 0.0).sum(),
            num_tokens=int(kept.sum().item()),
            kd_per_position=teacher_nll,
            figures={
                "samples": rewards.new_tensor(float(samples)),
                "tokens": kept.sum().to(rewards.dtype),
                "reward_sum": rewards.sum(),
                "reward_square_sum": rewards.square().sum(),
                "zero_std_samples": zero_std.sum().to(rewards.dtype),
                "kl_sum": torch.where(kept, kl.detach(), 0.0).sum(),
                "loss_sum": per_token.detach().sum(),
            },
        )

    def _placeholder(self, inputs: LossInputs) -> LossOutput:
        """A rank's placeholder micro-batch (no samples): no loss, every figure 0."""
        zero = inputs.student_hidden.new_zeros((), dtype=torch.float32)
        return LossOutput(
            loss=zero,
            kd_sum=zero,
            ce_sum=zero,
            num_tokens=0,
            figures=dict.fromkeys(self.figure_names, zero),
        )
