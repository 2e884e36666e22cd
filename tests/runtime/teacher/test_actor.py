"""The teacher actor's checks at start: whether its node's /dev/shm holds the SGLang teacher's batches."""

import logging

import pytest

from kubedistill.api import parse_job
from kubedistill.api.job import DistillationJob
from kubedistill.runtime.engines.sglang.hidden_states import shared_memory_size
from kubedistill.runtime.teacher.actor import largest_teacher_batch_tokens, warn_of_a_small_shared_memory
from tests.api.manifests import BASE, apply_changes


def job(**training: object) -> DistillationJob:
    return parse_job(
        apply_changes(
            BASE,
            {"spec.data.maxLength": 2048, "spec.data.promptMaxLength": 1024}
            | {f"spec.training.{name}": value for name, value in training.items()},
        )
    )


def test_the_largest_teacher_batch_is_a_micro_batch_of_the_longest_sequences() -> None:
    assert largest_teacher_batch_tokens(job(microBatchSize=4)) == 4 * 2048
    # A token cap shrinks a micro-batch, down to one whole sequence.
    assert largest_teacher_batch_tokens(job(microBatchSize=4, maxTokensPerDevice=5000)) == 5000
    assert largest_teacher_batch_tokens(job(microBatchSize=4, maxTokensPerDevice=100)) == 2048


@pytest.mark.skipif(shared_memory_size() is None, reason="no /dev/shm on this machine")
def test_a_teacher_whose_node_cannot_hold_its_batches_in_shared_memory_warns_naming_shm_size(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        warn_of_a_small_shared_memory(job(microBatchSize=4), hidden_size=64)
        assert not caplog.records, "4 x 2048 tokens of 64 floats fit in any /dev/shm"
        warn_of_a_small_shared_memory(job(microBatchSize=4), hidden_size=2**30)
    (record,) = caplog.records
    assert record.getMessage().startswith("spec.cluster.shmSize: /dev/shm holds")
