"""DPO's loss (mode preference) against a plain float64 computation from full logits: TRL's sigmoid loss over
summed answer log-probabilities, value and gradient, with the figures TRL logs; the pairs of a micro-batch
are read from `Sample.group`, chosen first."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kubedistill.api.spec import PreferenceSpec
from kubedistill.runtime.algorithms.base import AlgorithmContext, LossInputs
from kubedistill.runtime.algorithms.dpo import DPO, pair_indices
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.student.batch import MicroBatch

VOCAB, WIDTH = 13, 6


def sample(targets: int, group: int | None, prompt: int = 2, beta: float | None = None) -> Sample:
    ids = (np.arange(prompt + targets) % VOCAB).astype(np.int32)
    mask = np.arange(prompt + targets) >= prompt
    return Sample(
        input_ids=ids,
        target_mask=mask,
        source=f"pairs.jsonl:{group}",
        prompt_length=prompt,
        group=group,
        beta=beta,
    )


def plain_dpo(
    hidden: torch.Tensor,
    head: torch.Tensor,
    reference_head: torch.Tensor,
    labels: torch.Tensor,
    lengths: list[int],
    beta: torch.Tensor,
    normalizer: float,
    sft_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Full logits, float64; pairs are consecutive (chosen, rejected) sequences, `beta` each pair's; TRL's
    formulas (CogPO's, `cogpo.py:140-146`, with a beta per pair), plus `sft_weight` times each pair's
    chosen answer's mean negative log-likelihood per token."""

    def sequence_logps(weights: torch.Tensor) -> torch.Tensor:
        tokens = (hidden @ weights.T).log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
        return torch.stack([part.sum() for part in tokens.split(lengths)])

    policy = sequence_logps(head)
    with torch.no_grad():
        reference = sequence_logps(reference_head)
    chosen_ratio = policy[0::2] - reference[0::2]
    rejected_ratio = policy[1::2] - reference[1::2]
    chosen_tokens = torch.tensor(lengths[0::2], dtype=torch.float64)
    sft = -policy[0::2] / chosen_tokens
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)) + sft_weight * sft
    chosen_reward, rejected_reward = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    figures = {
        "loss": losses.detach().mean().item(),
        "sft_loss": sft.detach().mean().item(),
        "margin": (policy[0::2] - policy[1::2]).detach().mean().item(),
        "reward_margin": (chosen_reward - rejected_reward).mean().item(),
        "accuracy": (chosen_reward > rejected_reward).double().mean().item(),
        "chosen_reward": chosen_reward.mean().item(),
        "rejected_reward": rejected_reward.mean().item(),
        "chosen_logp": policy[0::2].detach().mean().item(),
        "rejected_logp": policy[1::2].detach().mean().item(),
    }
    return losses.sum() / normalizer, figures


def dpo(beta: float = 0.1, chunk: int | None = 3, sft_weight: float = 0.0) -> DPO:
    context = AlgorithmContext(
        config=KDConfig(chunk_size=chunk),
        student_hidden_size=WIDTH,
        teacher_hidden_size=None,
        preference=PreferenceSpec(beta=beta, sft_weight=sft_weight),
    )
    return DPO(context)


@pytest.mark.parametrize(
    ("beta", "own", "sft_weight"),
    [(0.1, None, 0.0), (2.0, None, 0.0), (0.1, 0.7, 0.0), (0.1, None, 0.5)],
    ids=["dpo", "dpo-2", "cogpo", "dpo-with-sft"],
)
def test_loss_gradient_and_figures_are_trls_sigmoid_dpo_in_float64(
    beta: float, own: float | None, sft_weight: float
) -> None:
    """`own`: the second pair's own beta from its record (CogPO); the first trains at the spec's."""
    torch.manual_seed(0)
    samples = [sample(3, 7), sample(4, 7), sample(2, 9, beta=own), sample(5, 9, beta=own)]
    betas = torch.tensor([beta, beta if own is None else own], dtype=torch.float64)
    lengths = [s.num_targets for s in samples]
    labels = torch.randint(0, VOCAB, (sum(lengths),))
    hidden = torch.randn(sum(lengths), WIDTH, dtype=torch.float64, requires_grad=True)
    head = torch.randn(VOCAB, WIDTH, dtype=torch.float64, requires_grad=True)
    reference_head = head.detach() + 0.3 * torch.randn(VOCAB, WIDTH, dtype=torch.float64)
    normalizer = 5.0  # the step's pairs, these two and three on other micro-batches or ranks

    want, figures = plain_dpo(hidden, head, reference_head, labels, lengths, betas, normalizer, sft_weight)
    want.backward()
    want_hidden, want_head = hidden.grad, head.grad
    hidden.grad = head.grad = None

    with torch.no_grad():
        reference = (hidden @ reference_head.T).log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
    extras = {**DPO.micro_batch_extras(samples), "reference_logprobs": reference.float()}
    positions = MicroBatch.from_samples(samples, pad_id=0).sample_index
    out = dpo(beta, sft_weight=sft_weight)(
        LossInputs(hidden, head, None, None, labels, normalizer, extras, sample_index=positions)
    )
    out.loss.backward()

    # The log-probabilities are float32 (`label_logprobs`), the reference here float64.
    torch.testing.assert_close(out.loss.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.grad, want_hidden, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.grad, want_head, rtol=1e-4, atol=1e-6)
    summary = DPO.summarize({name: float(value) for name, value in out.figures.items()})
    assert set(summary) == set(figures)
    for name, value in figures.items():
        assert summary[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert out.num_tokens == sum(lengths)


def test_at_the_reference_the_loss_is_log_two_and_moves_chosen_up_and_rejected_down() -> None:
    torch.manual_seed(1)
    samples = [sample(3, 0), sample(3, 0)]
    labels = torch.randint(0, VOCAB, (6,))
    hidden = torch.randn(6, WIDTH, dtype=torch.float64)
    head = torch.randn(VOCAB, WIDTH, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        reference = (hidden @ head.T).log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
    extras = {**DPO.micro_batch_extras(samples), "reference_logprobs": reference}
    positions = MicroBatch.from_samples(samples, pad_id=0).sample_index
    out = dpo(0.5)(LossInputs(hidden, head, None, None, labels, 1.0, extras, sample_index=positions))
    assert out.loss.item() == pytest.approx(np.log(2.0), abs=1e-6)
    assert out.figures["accuracy"].item() == 0.0  # z = 0 is not a win (TRL: chosen_reward > rejected_reward)
    out.loss.backward()
    assert head.grad is not None
    with torch.no_grad():
        stepped = head - 1e-3 * head.grad
        logps = (hidden @ stepped.T).log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
    assert logps[:3].sum() > reference[:3].sum()
    assert logps[3:].sum() < reference[3:].sum()


def test_the_normalizer_counts_pairs_and_a_placeholder_micro_batch_gives_every_figure() -> None:
    assert DPO.normalizer([sample(3, 0), sample(9, 0), sample(2, 1), sample(2, 1)]) == 2
    hidden = torch.zeros(0, WIDTH, requires_grad=True)
    head = torch.randn(VOCAB, WIDTH, requires_grad=True)
    out = dpo()(LossInputs(hidden, head, None, None, torch.zeros(0, dtype=torch.long), 3.0, {}))
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert head.grad is not None
    assert set(out.figures) == set(DPO.figure_names)


def test_pairs_are_read_from_their_group_chosen_first() -> None:
    assert pair_indices([sample(1, 4), sample(1, 4), sample(1, 2), sample(1, 2)]) == ([0, 2], [1, 3])
    with pytest.raises(ValueError, match="not 2"):
        pair_indices([sample(1, 4), sample(1, 2), sample(1, 2)])
    with pytest.raises(ValueError, match="outside a pair"):
        pair_indices([sample(1, None)])
