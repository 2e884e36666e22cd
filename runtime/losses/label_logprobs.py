"""Each position's log-probability of its label, log softmax(h W^T)[y], from hidden states and an output head,
without the [positions x vocabulary] logits ever existing whole: in the forward and again in the backward
they are formed a chunk of positions at a time (the backward recomputes them, as a fused cross-entropy
does), so memory is one chunk's logits however long the sequences.

What DPO and GRPO need of a model (sequence log-likelihoods, per-token ratios and KLs): the log-probability
of the sampled token alone, exactly, under the full vocabulary's softmax.

Gradient: d log p(y) / d z = onehot(y) - softmax(z), so with g the upstream gradient of each position,
dL/dh = (g (onehot - p)) W and dL/dW = (g (onehot - p))^T h, accumulated chunk by chunk in float32.
"""

from typing import Any

import torch
from torch import Tensor

from kubedistill.runtime.losses.output import IGNORE_INDEX

DEFAULT_CHUNK = 1024


def label_logprobs(hidden: Tensor, head: Tensor, labels: Tensor, chunk_size: int | None = None) -> Tensor:
    """[n] float32: log softmax(hidden @ head.T)[labels] at each position, 0 where the label is -100;
    differentiable in `hidden` and `head` ([n, d] and [vocab, d], any float dtype; logits in float32)."""
    chunk = chunk_size or DEFAULT_CHUNK
    result: Tensor = _LabelLogprobs.apply(hidden, head, labels, chunk)
    return result


class _LabelLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, head: Tensor, labels: Tensor, chunk: int) -> Tensor:
        out = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            stop = min(start + chunk, hidden.shape[0])
            logits = (hidden[start:stop] @ head.T).float()
            label = labels[start:stop]
            kept = label != IGNORE_INDEX
            picked = logits.gather(1, label.clamp(min=0).unsqueeze(1)).squeeze(1)
            out[start:stop] = torch.where(kept, picked - logits.logsumexp(dim=1), 0.0)
        ctx.save_for_backward(hidden, head, labels)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        hidden, head, labels = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden, dtype=torch.float32) if ctx.needs_input_grad[0] else None
        grad_head = torch.zeros_like(head, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            stop = min(start + ctx.chunk, hidden.shape[0])
            label = labels[start:stop]
            kept = label != IGNORE_INDEX
            upstream = torch.where(kept, grad[start:stop].float(), 0.0)
            if not bool(upstream.any()):
                continue
            chunk_hidden = hidden[start:stop]
            probabilities = (chunk_hidden @ head.T).float().softmax(dim=1)
            # g (onehot(y) - p): the gradient of each position's log p(y) in its logits, scaled.
            d_logits = -probabilities * upstream.unsqueeze(1)
            d_logits.scatter_add_(1, label.clamp(min=0).unsqueeze(1), upstream.unsqueeze(1))
            if grad_hidden is not None:
                grad_hidden[start:stop] = d_logits @ head.float()
            if grad_head is not None:
                grad_head += d_logits.T @ chunk_hidden.float()
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_head is None else grad_head.to(head.dtype),
            None,
            None,
        )
