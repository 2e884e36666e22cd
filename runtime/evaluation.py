"""Eval measures that need both models' logits, computed in chunks so no [tokens x vocab] matrix exists."""

import torch

from kubedistill.runtime.losses.chunking import chunk_rows


@torch.no_grad()
def top1_agreements(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: torch.Tensor,
    chunk_size: int | None,
) -> int:
    """Positions where student and teacher rank the same next token first (over their shared vocabulary)."""
    vocab = min(student_head.shape[0], teacher_head.shape[0])
    agreements = 0
    chunk = chunk_rows(chunk_size, student_hidden.shape[0], student_hidden.shape[1], vocab)
    for start in range(0, student_hidden.shape[0], chunk):
        stop = start + chunk
        student_top = (student_hidden[start:stop] @ student_head[:vocab].T).argmax(dim=-1)
        teacher_top = (teacher_hidden[start:stop] @ teacher_head[:vocab].T).argmax(dim=-1)
        agreements += int((student_top == teacher_top).sum().item())
    return agreements
