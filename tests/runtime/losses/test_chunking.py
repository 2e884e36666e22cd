import pytest
import torch
from torch import Tensor

from kubedistill.api.spec import DistillationSpec
from kubedistill.runtime.losses import KDConfig, fused_kd_loss, register_loss
from kubedistill.runtime.losses.chunking import MEMORY_MULTIPLE, memory_bound_chunk
from tests.runtime.losses.problems import Problem, make_problem, reference_from_hidden

CHUNK_ROWS: list[int] = []
"""Rows of each chunk the recording divergence below was called with."""


@register_loss("testRecordsChunkRows")
def forward_kl_recording_chunk_rows(student_logits: Tensor, teacher_logits: Tensor, _: KDConfig) -> Tensor:
    CHUNK_ROWS.append(student_logits.shape[0])
    log_p = teacher_logits.log_softmax(-1)
    return (log_p.exp() * (log_p - student_logits.log_softmax(-1))).sum(-1)


@pytest.mark.parametrize(
    ("tokens", "hidden", "vocab", "chunk"),
    [
        (2048, 1024, 151936, 128),  # bench.loss: a Qwen3 vocabulary
        (8192, 2560, 151936, 1024),  # a Qwen3-4B-wide student
        (16384, 4096, 32000, 16384),  # logits within 8x the hidden states: one chunk
        (300, 64, 400, 300),  # the tiny bench pair's micro-batch: one chunk
        (1, 8, 10**6, 1),
    ],
)
def test_memory_bound_chunk_bounds_a_chunks_logits_by_the_hidden_states(
    tokens: int, hidden: int, vocab: int, chunk: int
) -> None:
    assert memory_bound_chunk(tokens, hidden, vocab) == chunk
    # A power of two (or all the tokens) whose [chunk x vocab] logits are within 2C of [tokens x hidden].
    assert chunk == tokens or chunk & (chunk - 1) == 0
    assert chunk == 1 or chunk * vocab <= 2 * MEMORY_MULTIPLE * tokens * hidden


def test_an_unset_chunk_size_is_the_spec_default_and_means_from_the_shapes() -> None:
    assert DistillationSpec().loss_chunk_size is None
    assert KDConfig().chunk_size is None


def wide_vocabulary_problem() -> Problem:
    """A vocabulary large against the hidden width, so that the rule cuts the tokens into several chunks."""
    return make_problem(tokens=64, student_vocab=400, teacher_vocab=390, student_dim=4, teacher_dim=6)


def _chunk_rows_of_one_fused_call(config: KDConfig) -> list[int]:
    problem = wide_vocabulary_problem()
    CHUNK_ROWS.clear()
    actual, grad_hidden, _ = problem.run(fused_kd_loss, config)
    rows = list(CHUNK_ROWS)
    expected, expected_grad_hidden, _ = problem.run(reference_from_hidden, config)
    torch.testing.assert_close(actual.loss, expected.loss)
    torch.testing.assert_close(grad_hidden, expected_grad_hidden)
    return rows


def test_without_a_chunk_size_the_fused_loss_chunks_by_the_memory_bound_rule() -> None:
    problem = wide_vocabulary_problem()
    kept = int((problem.labels != -100).sum())
    hidden, vocab = problem.student_hidden.shape[1], problem.student_weight.shape[0]
    chunk = memory_bound_chunk(kept, hidden, vocab)
    assert 1 < chunk < kept, "the problem must need more than one chunk for this test to mean anything"

    rows = _chunk_rows_of_one_fused_call(KDConfig(loss="testRecordsChunkRows", kd_ratio=0.5))

    assert rows == [chunk] * (kept // chunk) + ([kept % chunk] if kept % chunk else [])


def test_a_chunk_size_set_in_the_spec_wins_over_the_rule() -> None:
    spec = DistillationSpec(loss="testRecordsChunkRows", kd_ratio=0.5, loss_chunk_size=5)

    rows = _chunk_rows_of_one_fused_call(KDConfig.from_spec(spec))

    assert set(rows[:-1]) == {5}
    assert 0 < rows[-1] <= 5
