"""Eval measures that need both models' logits, computed in chunks so no [tokens x vocab] matrix exists."""

import torch


@torch.no_grad()
def top1_agreements(
    student_hidden: torch.Tensor,
    student_head: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head: torch.Tensor,
    chunk_size: int,
) -> int:
    """Positions where student and teacher rank the same next token first (over their shared vocabulary)."""
    vocab = min(student_head.shape[0], teacher_head.shape[0])
    agreements = 0
    for start in range(0, student_hidden.shape[0], chunk_size):
        stop = start + chunk_size
        student_top = (student_hidden[start:stop] @ student_head[:vocab].T).argmax(dim=-1)
        teacher_top = (teacher_hidden[start:stop] @ teacher_head[:vocab].T).argmax(dim=-1)
        agreements += int((student_top == teacher_top).sum().item())
    return agreements
