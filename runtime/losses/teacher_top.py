"""Losses on the teacher's most likely tokens, KDFlow's `top1_ce` and `hrl` (songmzhang/KDFlow @ 3a7a21a,
`kdflow/loss/top1_ce.py` and `kdflow/loss/hierarchical_ranking_loss.py`), with the signature of every loss
here: (student_logits [N, V], teacher_logits [N, V], config) -> [N], logits already divided by T.

With p = softmax(teacher_logits), q = softmax(student_logits), t = argmax p:

    top1Ce = -p_t log q_t

the cross-entropy towards the teacher's top token, weighted by the teacher's confidence in it.

    hrl = sum_j relu(q[T_j] - q[T_0])                                  (the teacher's top token first)
        + sum_{i,j} relu(q[S_j] - q[T_i]) [q[S_i] > p[S_j]]            (the rest of the teacher's top-k)

with T the indices of p's k largest probabilities in descending order, S those of q, and k =
config.hrl_top_k. The first term asks the student to rank the teacher's top token above the teacher's
other top-k tokens; the second penalises a student top-k token more probable than one of the teacher's
top-k tokens. The indicator is KDFlow's code as written (its line 28 compares the student's probability of
S_i with the teacher's of S_j); it is a constant of the gradient, as are the top-k indices.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from kubedistill.runtime.losses.config import KDConfig


def top1_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    confidence, top = F.softmax(teacher_logits, dim=-1).max(dim=-1)
    return -confidence * F.log_softmax(student_logits, dim=-1).gather(-1, top[:, None]).squeeze(-1)


def top1_cross_entropy_value_and_grad(
    student_logits: Tensor, teacher_logits: Tensor
) -> tuple[Tensor, Tensor]:
    """top1Ce and its gradient p_t (q - onehot(t)), for the fused loss's closed forms."""
    confidence, top = F.softmax(teacher_logits, dim=-1).max(dim=-1)
    log_q = F.log_softmax(student_logits, dim=-1)
    value = -confidence * log_q.gather(-1, top[:, None]).squeeze(-1)
    grad = log_q.exp_().mul_(confidence[:, None])
    grad.scatter_add_(1, top[:, None], -confidence[:, None])
    return value, grad


def hierarchical_ranking(student_logits: Tensor, teacher_logits: Tensor, config: KDConfig) -> Tensor:
    k = config.hrl_top_k
    p = F.softmax(teacher_logits, dim=-1)
    q = F.softmax(student_logits, dim=-1)
    q_student_top, student_top = q.topk(k, dim=-1)
    teacher_top = p.topk(k, dim=-1).indices
    q_teacher_top = q.gather(-1, teacher_top)
    top_first = F.relu(q_teacher_top - q_teacher_top[:, :1]).sum(dim=-1)
    with torch.no_grad():
        counted = q_student_top[:, :, None] > p.gather(-1, student_top)[:, None, :]
    above = F.relu(q_student_top[:, None, :] - q_teacher_top[:, :, None])
    return top_first + (above * counted).sum(dim=(-2, -1))
