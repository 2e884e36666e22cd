"""GRPO with the teacher as the reward (mode reinforcement): each sample's reward is the teacher's mean
log-probability of its answer, its advantage is relative to its prompt's group, and the loss is TRL's
per-token GRPO loss with the k3 KL to the reference, normalised by the global batch's tokens; checked against
TRL's formulas written plainly in float64, value and gradient."""

import numpy as np
import pytest
import torch

from kubedistill.api.spec import ReinforcementSpec
from kubedistill.runtime.algorithms.base import AlgorithmContext, LossInputs
from kubedistill.runtime.algorithms.grpo import ADVANTAGE_EPSILON, GRPO, group_advantages
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.losses.output import IGNORE_INDEX
from kubedistill.runtime.student.batch import MicroBatch

VOCAB, STUDENT_WIDTH, TEACHER_WIDTH = 11, 5, 6

ANSWERS = [(3, 0), (2, 0), (4, 0), (1, 7), (2, 7), (2, None)]
"""(answer tokens, group) of each sample of the micro-batch: a prompt answered three times, one answered
twice, and a sample on its own."""


def sample(answer_tokens: int, group: int | None, seed: int) -> Sample:
    prompt = [1, 2, 3]
    answer = np.random.default_rng(seed).integers(0, VOCAB, answer_tokens).tolist()
    return Sample(
        input_ids=np.array(prompt + answer, dtype=np.int32),
        target_mask=np.arange(len(prompt) + answer_tokens) >= len(prompt),
        source=f"prompts.jsonl:{seed}",
        prompt_length=len(prompt),
        group=group,
    )


def grpo(kl_coef: float, chunk_size: int | None = 4) -> GRPO:
    return GRPO(
        AlgorithmContext(
            KDConfig(chunk_size=chunk_size),
            STUDENT_WIDTH,
            TEACHER_WIDTH,
            reinforcement=ReinforcementSpec(kl_coef=kl_coef),
        )
    )


def inputs(samples: list[Sample], seed: int = 0, dtype: torch.dtype = torch.float64) -> LossInputs:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor([label for s in samples for label in s.labels()])
    n = labels.shape[0]
    return LossInputs(
        student_hidden=torch.randn(n, STUDENT_WIDTH, generator=generator, dtype=dtype).requires_grad_(),
        student_head=torch.randn(VOCAB, STUDENT_WIDTH, generator=generator, dtype=dtype).requires_grad_(),
        teacher_hidden=torch.randn(n, TEACHER_WIDTH, generator=generator, dtype=dtype),
        teacher_head=torch.randn(VOCAB, TEACHER_WIDTH, generator=generator, dtype=dtype),
        labels=labels,
        normalizer=float(n + 5),
        extras={
            **GRPO.micro_batch_extras(samples),
            "reference_logprobs": -torch.rand(n, generator=generator, dtype=torch.float64).float() * 3,
        },
        sample_index=MicroBatch.from_samples(samples, pad_id=0).sample_index,
    )


def trl_grpo(batch: LossInputs, samples: list[Sample], kl_coef: float) -> tuple[torch.Tensor, list[float]]:
    """TRL's GRPO loss (grpo_trainer.py: advantages :2765-2787, per-token loss :3095-3150, loss_type dapo
    :3168-3174) in float64 on the full logits, with the teacher's mean answer log-probability as the reward;
    and the rewards."""
    logp_all = torch.log_softmax((batch.student_hidden @ batch.student_head.T).double(), -1)
    assert batch.teacher_hidden is not None and batch.teacher_head is not None
    teacher_all = torch.log_softmax((batch.teacher_hidden @ batch.teacher_head.T).double(), -1)
    mask = batch.labels != IGNORE_INDEX
    index = batch.labels.clamp_min(0)[:, None]
    logp = logp_all.gather(1, index).squeeze(1)
    teacher = teacher_all.gather(1, index).squeeze(1)
    owner = torch.tensor([i for i, s in enumerate(samples) for _ in range(s.num_targets)])
    rewards = torch.stack([teacher[(owner == i) & mask].mean() for i in range(len(samples))])
    advantages = []
    for i, s in enumerate(samples):
        members = [j for j, t in enumerate(samples) if s.group is not None and t.group == s.group] or [i]
        group = rewards[members]
        std = group.std() if len(members) > 1 else torch.zeros((), dtype=torch.float64)
        advantages.append((rewards[i] - group.mean()) / (std + 1e-4))
    per_token_advantage = torch.stack(advantages)[owner]
    ref = batch.extras["reference_logprobs"].double()
    per_token_kl = torch.exp(ref - logp) - (ref - logp) - 1
    per_token_loss = -(torch.exp(logp - logp.detach()) * per_token_advantage) + kl_coef * per_token_kl
    return (per_token_loss * mask).sum() / batch.normalizer, rewards.tolist()


def gradients(loss: torch.Tensor, batch: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    hidden, head = torch.autograd.grad(loss, [batch.student_hidden, batch.student_head])
    return hidden, head


@pytest.mark.parametrize("kl_coef", [0.0, 0.04, 0.5])
def test_the_loss_and_its_gradient_are_trls_grpo_with_the_teachers_likelihood_as_reward(
    kl_coef: float,
) -> None:
    samples = [sample(tokens, group, seed) for seed, (tokens, group) in enumerate(ANSWERS)]
    batch = inputs(samples)
    # A label the micro-batch does not train on counts for nothing, in the reward too.
    labels = batch.labels.clone()
    labels[4] = IGNORE_INDEX
    batch = LossInputs(**{**batch.__dict__, "labels": labels})
    output = grpo(kl_coef)(batch)
    expected, rewards = trl_grpo(batch, samples, kl_coef)
    torch.testing.assert_close(output.loss.double(), expected, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(gradients(output.loss, batch), gradients(expected, batch), strict=True):
        torch.testing.assert_close(ours.double(), theirs, rtol=1e-4, atol=1e-6)
    # Each position's divergence is the teacher's negative log-probability: a sample's mean is -reward.
    assert output.kd_per_position is not None
    owner = batch.sample_index
    assert owner is not None
    for i, reward in enumerate(rewards):
        mine = (owner == i) & (labels != IGNORE_INDEX)
        assert float(-output.kd_per_position[mine].mean()) == pytest.approx(reward, rel=1e-5)
    assert output.num_tokens == labels.numel() - 1
    figures = GRPO.summarize({name: float(value) for name, value in output.figures.items()})
    assert figures["reward"] == pytest.approx(float(np.mean(rewards)), rel=1e-5)
    assert figures["reward_std"] == pytest.approx(float(np.std(rewards, ddof=1)), rel=1e-4)
    assert figures["loss"] == pytest.approx(
        float(expected.detach()) * batch.normalizer / output.num_tokens, rel=1e-5
    )
    assert figures["frac_reward_zero_std"] == pytest.approx(1 / len(samples))


def test_advantages_are_relative_to_the_prompts_group_and_a_group_of_one_has_none() -> None:
    rewards = torch.tensor([-1.0, -2.0, -3.0, -0.5, -0.5, -4.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    advantages, stds = group_advantages(rewards, groups)
    # The first group: mean -2, Bessel-corrected std 1.
    torch.testing.assert_close(
        advantages[:3], torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64) / (1 + 1e-4)
    )
    torch.testing.assert_close(stds[:3], torch.ones(3, dtype=torch.float64))
    # Equal rewards tell nothing apart, and a sample alone has nothing to be compared with.
    assert advantages[3:].tolist() == [0.0, 0.0, 0.0]
    assert stds[3:].tolist() == [0.0, 0.0, 0.0]
    assert ADVANTAGE_EPSILON == 1e-4


def test_without_a_difference_in_reward_or_from_the_reference_nothing_moves() -> None:
    """Every answer alone in its group (no advantage) and the reference equal to the student: loss, KL and
    gradient are zero, whatever the teacher thinks of the answers."""
    samples = [sample(tokens, None, seed) for seed, (tokens, _) in enumerate(ANSWERS)]
    batch = inputs(samples)
    own = torch.log_softmax(batch.student_hidden @ batch.student_head.T, -1).gather(1, batch.labels[:, None])
    batch = LossInputs(
        **{**batch.__dict__, "extras": {**batch.extras, "reference_logprobs": own.squeeze(1).detach()}}
    )
    output = grpo(0.5)(batch)
    assert abs(float(output.loss.detach())) < 1e-7
    assert float(output.figures["kl_sum"]) < 1e-6
    for gradient in gradients(output.loss, batch):
        assert float(gradient.abs().max()) < 1e-6


def test_a_step_makes_the_answer_the_teacher_judged_better_more_likely_than_its_sibling() -> None:
    samples = [sample(3, 0, seed=10), sample(3, 0, seed=11)]
    batch = inputs(samples, seed=3)
    output = grpo(0.0)(batch)
    rewards = -torch.stack([output.kd_per_position[:3].mean(), output.kd_per_position[3:].mean()])
    better = int(rewards.argmax())
    hidden_grad, head_grad = gradients(output.loss, batch)

    def answer_logprob(hidden: torch.Tensor, head: torch.Tensor, which: int) -> float:
        logp = torch.log_softmax(hidden @ head.T, -1).gather(1, batch.labels[:, None]).squeeze(1)
        return float(logp[3 * which : 3 * which + 3].sum().detach())

    before = [answer_logprob(batch.student_hidden, batch.student_head, i) for i in (0, 1)]
    with torch.no_grad():
        after = [
            answer_logprob(
                batch.student_hidden - 0.05 * hidden_grad, batch.student_head - 0.05 * head_grad, i
            )
            for i in (0, 1)
        ]
    assert after[better] > before[better]
    assert after[1 - better] < before[1 - better]


def test_a_placeholder_micro_batch_gives_every_figure_and_no_loss() -> None:
    empty = LossInputs(
        student_hidden=torch.zeros(0, STUDENT_WIDTH),
        student_head=torch.zeros(VOCAB, STUDENT_WIDTH),
        teacher_hidden=None,
        teacher_head=None,
        labels=torch.zeros(0, dtype=torch.long),
        normalizer=1.0,
    )
    output = grpo(0.04)(empty)
    assert set(output.figures) == set(GRPO.figure_names)
    assert float(output.loss) == 0.0 and output.num_tokens == 0
    assert GRPO.summarize({name: 0.0 for name in GRPO.figure_names}) == {}


def test_extras_number_the_groups_of_the_micro_batch_and_the_batch_gives_the_sample_of_each_position() -> (
    None
):
    samples = [sample(2, 41, 0), sample(1, 41, 1), sample(2, None, 2), sample(1, 9, 3)]
    extras = GRPO.micro_batch_extras(samples)
    assert extras["sample_group"].tolist() == [0, 0, 1, 2]
    for packed in (False, True):
        positions = MicroBatch.from_samples(samples, pad_id=0, packed=packed).sample_index
        assert positions is not None and positions.tolist() == [0, 0, 1, 2, 2, 3]
    assert GRPO.micro_batch_extras([]) == {}
