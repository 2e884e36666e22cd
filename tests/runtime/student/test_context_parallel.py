"""Context parallelism of the student (issue 28, item 3): a micro-batch's sequence cut zigzag over a context
group, attention gathering every rank's keys and values; a step on two ranks (gloo, float64, FSDP2 over the
flattened (data, context) mesh) has the unsplit step's loss and gradients, for padded rows and a packed
row."""

import itertools
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.multiprocessing.spawn import spawn

from kubedistill.runtime.algorithms.vanilla import VanillaKD
from kubedistill.runtime.student.batch import MicroBatch
from kubedistill.runtime.student.context_parallel import (
    chunk_micro_batch,
    group_sample_divergences,
    use_context_parallel_attention,
    zigzag_columns,
)
from kubedistill.runtime.student.module import ForwardOutput
from kubedistill.runtime.student.parallelize import context_mesh, decoder_blocks
from tests.runtime.conftest import TEACHER, TinyWorld
from tests.runtime.student.test_packing import PAD, float64_module, loss_and_gradients, real_samples, sample

SIZE = 2


SMALL = [sample([5, 6, 7], 1), sample([8], 1), sample([9, 10, 11, 12, 13], 2)]


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_the_zigzag_chunks_hold_every_column_once_and_equal_causal_work(size: int) -> None:
    length = 2 * size * 5
    chunks = [zigzag_columns(length, size, rank) for rank in range(size)]
    assert sorted(torch.cat(chunks).tolist()) == list(range(length))
    # A causal query at column c attends c + 1 keys: every rank's queries attend the same number.
    assert len({int((chunk + 1).sum()) for chunk in chunks}) == 1


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_the_chunks_hold_each_loss_position_once_with_its_token_and_label(packed: bool) -> None:
    batch = MicroBatch.from_samples(SMALL, PAD, packed=packed)
    tokens = batch.input_ids[batch.rows, batch.columns]
    seen = []
    for rank in range(SIZE):
        chunk = chunk_micro_batch(batch, SIZE, rank)
        assert chunk.targets is not None
        seen.extend(chunk.targets.tolist())
        assert chunk.labels.tolist() == batch.labels[chunk.targets].tolist()
        assert batch.sample_index is not None and chunk.sample_index is not None
        assert chunk.sample_index.tolist() == batch.sample_index[chunk.targets].tolist()
        assert chunk.input_ids[chunk.rows, chunk.columns].tolist() == tokens[chunk.targets].tolist()
        assert chunk.targets.tolist() == sorted(chunk.targets.tolist()), "the micro-batch's order"
    assert sorted(seen) == list(range(batch.num_targets))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_the_chunks_masks_put_together_are_the_unsplit_mask(packed: bool) -> None:
    """Causal within each sample, padding never attended: what transformers builds for the unsplit batch
    (masking_utils.py:991-1002 for a packed row)."""
    batch = MicroBatch.from_samples(SMALL, PAD, packed=packed)
    rows, length = batch.input_ids.shape
    whole = torch.zeros(rows, length + 4, length + 4, dtype=torch.bool)  # 8 and 12 slots: 4 added each
    for rank in range(SIZE):
        chunk = chunk_micro_batch(batch, SIZE, rank)
        assert chunk.key_mask is not None
        columns = zigzag_columns(whole.shape[1], SIZE, rank)
        keys = torch.cat([zigzag_columns(whole.shape[1], SIZE, other) for other in range(SIZE)])
        whole[:, columns.unsqueeze(1), keys.unsqueeze(0)] = chunk.key_mask[:, 0]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    if packed:
        starts = [0, 3, 4, 9]
        expected = torch.zeros(1, length, length, dtype=torch.bool)
        for start, end in itertools.pairwise(starts):
            expected[0, start:end, start:end] = causal[start:end, start:end]
    else:
        expected = causal.unsqueeze(0) & batch.attention_mask.bool().unsqueeze(1)
    assert torch.equal(whole[:, :length, :length], expected)
    assert not whole[:, :, length:].any(), "the added padding is never attended"


@pytest.mark.parametrize("case", ["padded", "packed", "placeholder"])
def test_every_query_of_every_chunk_attends_at_least_one_key(case: str) -> None:
    """sdpa gives NaN for a query with no key: the added padding and a rank's placeholder micro-batch (one
    token, no targets) must still see a token."""
    samples = [] if case == "placeholder" else SMALL
    batch = MicroBatch.from_samples(samples, PAD, packed=case == "packed")
    for rank in range(SIZE):
        chunk = chunk_micro_batch(batch, SIZE, rank)
        assert chunk.key_mask is not None
        assert chunk.key_mask.any(dim=-1).all()


def test_micro_batches_with_alignments_are_not_cut() -> None:
    batch = MicroBatch.from_samples(SMALL, PAD, {"alignment": torch.zeros(3)})
    with pytest.raises(ValueError, match="extras"):
        chunk_micro_batch(batch, SIZE, 0)


# -- two ranks on gloo, float64: a context-parallel step against the unsplit one -----------------------------


def _rank(rank: int, tiny: TinyWorld, cases: dict, directory: str) -> None:
    torch.set_num_threads(1)  # two ranks on the test machine's two cores
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=SIZE)
    try:
        results = {}
        for name, (batch, hidden, normalizer) in cases.items():
            reference, _ = float64_module(tiny, VanillaKD, "same")
            expected = loss_and_gradients(reference, batch, hidden, normalizer)
            figures = reference(batch, hidden, normalizer).sample_divergences
            module, _ = float64_module(tiny, VanillaKD, "same")
            use_context_parallel_attention(module.student)
            mesh, group = context_mesh("cpu", SIZE, SIZE)
            # As apply_fsdp, without its float32 gradient reduction: the comparison is in float64.
            for block in decoder_blocks(module.student):
                fully_shard(block, mesh=mesh)
            fully_shard(module, mesh=mesh, reshard_after_forward=False)
            chunk = chunk_micro_batch(batch, SIZE, rank, group)
            assert chunk.targets is not None and chunk.num_targets > 0
            forward = module(chunk, hidden[chunk.targets], normalizer)
            loss = forward.loss.loss
            # The chunk's per-sample means, put together over the group as the worker does.
            (split_figures,) = group_sample_divergences([chunk], [tuple(forward.sample_divergences)], group)
            # The worker's scale: FSDP2 averages the ranks' gradients, the loss is already the global one's.
            (loss * SIZE).backward()
            total = loss.detach().clone()
            dist.all_reduce(total)
            gradients = {name: whole(p.grad) for name, p in module.named_parameters() if p.grad is not None}
            # Evaluation's sums (the worker's evaluate all-reduces them over every rank).
            with torch.no_grad():
                unsplit = evaluation_sums(reference(batch, hidden, normalizer, measure_agreement=True))
                split = evaluation_sums(
                    module(chunk, hidden[chunk.targets], normalizer, measure_agreement=True)
                )
            dist.all_reduce(split)
            results[name] = (expected, (total, gradients), (figures, split_figures), (unsplit, split))
        if rank == 0:
            torch.save(results, f"{directory}/results.pt")
    finally:
        dist.destroy_process_group()


def evaluation_sums(output: ForwardOutput) -> torch.Tensor:
    loss = output.loss
    figures = [loss.kd_sum.item(), loss.ce_sum.item(), loss.num_tokens, output.agreements]
    return torch.tensor(figures, dtype=torch.float64)


def whole(gradient: torch.Tensor) -> torch.Tensor:
    assert isinstance(gradient, DTensor), "FSDP2 shards every parameter"
    return gradient.full_tensor()


@pytest.fixture(scope="module")
def two_rank_steps(tiny: TinyWorld) -> dict:
    samples = real_samples(tiny, None)
    positions = sum(len(s.teacher_loss_positions()) for s in samples)
    hidden = torch.randn(positions, TEACHER.hidden_size, generator=torch.Generator().manual_seed(1)).double()
    normalizer = float(sum(s.num_targets for s in samples) + 7)
    cases = {
        "padded": (MicroBatch.from_samples(samples, PAD), hidden, normalizer),
        "packed": (MicroBatch.from_samples(samples, PAD, packed=True), hidden, normalizer),
    }
    with tempfile.TemporaryDirectory() as directory:
        # Spawned: forked from the test process, the ranks hung in a trial run.
        spawn(_rank, args=(tiny, cases, directory), nprocs=SIZE, join=True)
        return torch.load(Path(directory) / "results.pt")


@pytest.mark.parametrize("case", ["padded", "packed"])
def test_a_context_parallel_step_has_the_unsplit_steps_loss_and_gradients(
    two_rank_steps: dict, case: str
) -> None:
    (loss, gradients), (split_loss, split_gradients), _, _ = two_rank_steps[case]
    assert loss.item() > 0.0
    torch.testing.assert_close(split_loss, loss, rtol=1e-10, atol=0.0)
    assert split_gradients.keys() == gradients.keys()
    assert len(gradients) >= 10
    for name, gradient in gradients.items():
        torch.testing.assert_close(split_gradients[name], gradient, rtol=1e-9, atol=1e-13, msg=name)


@pytest.mark.parametrize("case", ["padded", "packed"])
def test_each_samples_divergence_is_its_mean_over_the_whole_sequence_not_the_ranks_means_averaged(
    two_rank_steps: dict, case: str
) -> None:
    """Rank 0 reports them (sums and counts added over the group), once for the micro-batch."""
    _, _, (figures, split_figures), _ = two_rank_steps[case]
    assert len(figures) == 5 and all(figure is not None and figure > 0 for figure in figures)
    assert split_figures == pytest.approx(figures, rel=1e-10)


@pytest.mark.parametrize("case", ["padded", "packed"])
def test_evaluation_sums_over_the_chunks_are_the_unsplit_ones(two_rank_steps: dict, case: str) -> None:
    """Divergence and cross-entropy sums, targets and top-1 agreements with the teacher, each position counted
    by the one rank whose chunk holds it."""
    _, _, _, (unsplit, split) = two_rank_steps[case]
    assert unsplit[0] > 0 and unsplit[2] > 0
    torch.testing.assert_close(split, unsplit, rtol=1e-10, atol=0.0)
