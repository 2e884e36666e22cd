"""Each position's log-probability of its label, chunk by chunk: the value and both gradients are the plain
full-logits computation's, whatever the chunk; an ignored position is 0 and passes no gradient."""

import pytest
import torch

from kubedistill.runtime.losses.label_logprobs import label_logprobs


def plain(hidden: torch.Tensor, head: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logp = (hidden @ head.T).log_softmax(dim=-1)
    picked = logp.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
    return torch.where(labels != -100, picked, 0.0)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_values_and_gradients_are_the_full_logits_ones_in_any_chunk(chunk: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    head = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([3, -100, 0, 10, 7, -100, 2])
    weights = torch.randn(7, dtype=torch.float64)

    expected = plain(hidden, head, labels)
    (expected.double() * weights).sum().backward()
    want_hidden, want_head = hidden.grad, head.grad
    hidden.grad = head.grad = None

    got = label_logprobs(hidden, head, labels, chunk)
    (got.double() * weights).sum().backward()

    torch.testing.assert_close(got.double(), expected.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(hidden.grad, want_hidden, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(head.grad, want_head, atol=1e-6, rtol=1e-6)


def test_an_ignored_position_is_zero_and_gets_no_gradient() -> None:
    hidden = torch.randn(2, 4, requires_grad=True)
    head = torch.randn(6, 4)
    out = label_logprobs(hidden, head, torch.tensor([-100, 1]))
    out.sum().backward()
    assert out[0] == 0.0 and out[1] < 0.0
    assert hidden.grad is not None and torch.all(hidden.grad[0] == 0.0)
