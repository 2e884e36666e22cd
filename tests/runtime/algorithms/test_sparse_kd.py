"""Sparse KD in a job (mode sft, algorithm sparseKd): records' teacherLogprobs become per-target top-k arrays
on the samples, which survive the prepared-set cache and reach the loss in the micro-batch's order of loss
positions; the fused loss from hidden states equals the plain one on full logits, gradients included."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kubedistill.api.spec import DataSource, DataSpec, DistillationSpec, Mode
from kubedistill.runtime.algorithms.base import ALGORITHMS, AlgorithmContext, LossInputs
from kubedistill.runtime.algorithms.sparse_kd import SparseKD
from kubedistill.runtime.data.errors import BadRecordError
from kubedistill.runtime.data.load import load_samples
from kubedistill.runtime.data.records import Record
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.data.tokenize import SampleBuilder
from kubedistill.runtime.demo.tiny import build_tokenizer
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.losses.output import IGNORE_INDEX
from kubedistill.runtime.losses.sparse import fused_sparse_kd_loss, sparse_kd_loss
from kubedistill.runtime.student.batch import MicroBatch

CORPUS = ["What is 2+2? The answer is 4. Be brief.", "hello there, how are you? I am fine, thank you."]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS, vocab_size=256)


def generated(tokenizer, answer: str, sampled: list[int] | None = None, k: int = 2) -> dict:
    """A generated record as the generation phase writes it: the answer, and the teacher's top-k at each
    sampled token (`sampled`: those tokens; the tokenizer's own by default); top-1 is the sampled token."""
    ids = tokenizer.encode(answer, add_special_tokens=False) if sampled is None else sampled
    return {
        "messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": answer}],
        "teacherLogprobs": {
            "ids": ids,
            "logprobs": [-0.25] * len(ids),
            "topIds": [[i, 7][:k] for i in ids],
            "topLogprobs": [[-0.25, -2.5][:k] for _ in ids],
        },
    }


def build(tokenizer, fields: dict) -> Sample:
    source = DataSource(path="generated.jsonl")
    builder = SampleBuilder(
        source,
        DataSpec(train=source, max_length=4096, prompt_max_length=2048),
        tokenizer,
        Mode.SFT,
        tokenizer,
        sparse_targets=True,
    )
    return builder(Record("generated.jsonl:3", fields))


def test_each_target_carries_the_teachers_top_k_and_the_end_of_turn_none(tokenizer) -> None:
    sample = build(tokenizer, generated(tokenizer, "The answer is 4."))
    answer = tokenizer.encode("The answer is 4.", add_special_tokens=False)
    assert sample.teacher_top_ids is not None and sample.teacher_top_logprobs is not None
    assert sample.teacher_top_ids.shape == (sample.num_targets, 2)
    assert sample.teacher_top_ids[: len(answer)].tolist() == [[i, 7] for i in answer]
    assert sample.teacher_top_logprobs[: len(answer)].tolist() == [[-0.25, -2.5]] * len(answer)
    assert sample.num_targets > len(answer), "the template's end of turn is a target too"
    assert (sample.teacher_top_ids[len(answer) :] == -1).all(), "no teacher distribution after the answer"


def test_a_record_whose_targets_are_not_the_sampled_tokens_is_bad_naming_where_and_what(tokenizer) -> None:
    answer = tokenizer.encode("The answer is 4.", add_special_tokens=False)
    # The teacher sampled other tokens than the template renders (e.g. reasoning rendered its own way).
    sampled = [answer[0], answer[2], *answer[2:]]
    with pytest.raises(BadRecordError, match=r"generated\.jsonl:3: .*from response token 1") as error:
        build(tokenizer, generated(tokenizer, "The answer is 4.", sampled))
    assert "teacherLogprobs.ids" in str(error.value)
    with pytest.raises(BadRecordError, match=r"generated\.jsonl:3: has no teacherLogprobs"):
        build(tokenizer, {"messages": generated(tokenizer, "4")["messages"]})


def test_the_prepared_set_cache_keeps_the_top_k_and_sparse_jobs_have_their_own_key(
    tokenizer, tmp_path: Path
) -> None:
    path = tmp_path / "generated.jsonl"
    records = [generated(tokenizer, answer) for answer in ("The answer is 4.", "I am fine, thank you.")]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    source = DataSource(path=str(path))
    data = DataSpec(train=source, max_length=4096, prompt_max_length=2048)

    def load(sparse: bool):
        return load_samples(
            source,
            data,
            tokenizer,
            mode=Mode.SFT,
            cache=tmp_path / "cache",
            processes=1,
            sparse_targets=sparse,
        )

    first, again = load(True), load(True)
    kept = tmp_path / "cache" / f"spec.data.train-{first.key}"
    assert {"teacher_top_ids.npy", "teacher_top_logprobs.npy"} <= {file.name for file in kept.iterdir()}
    plain = load(False)
    assert first.key == again.key != plain.key
    for fresh, mapped in zip(first.samples, again.samples, strict=True):
        assert fresh == mapped and mapped.teacher_top_ids is not None
        assert mapped.teacher_top_logprobs is not None and mapped.teacher_top_logprobs.dtype == np.float32
    assert all(sample.teacher_top_ids is None for sample in plain.samples)
    rescored = [
        {
            **record,
            "teacherLogprobs": {
                **record["teacherLogprobs"],
                "topLogprobs": [[-0.5, -1.0]] * len(record["teacherLogprobs"]["ids"]),
            },
        }
        for record in records
    ]
    path.write_text("".join(json.dumps(record) + "\n" for record in rescored))
    assert load(True).sha256 != first.sha256, "resume's data identity sees other stored targets"


@pytest.mark.parametrize("packed", [False, True])
def test_the_extras_pair_each_loss_position_with_its_own_targets_top_k(tokenizer, packed: bool) -> None:
    samples = [build(tokenizer, generated(tokenizer, text)) for text in ("The answer is 4.", "I am fine.")]
    batch = MicroBatch.from_samples(samples, 0, SparseKD.micro_batch_extras(samples), packed)
    top = batch.extras["top_ids"]
    assert top.shape == (batch.num_targets, 2)
    sampled = top[:, 0] >= 0
    # Every answer token's top-1 is the token sampled there, which is that position's label.
    assert torch.equal(top[sampled, 0], batch.labels[sampled])
    assert int(sampled.sum()) == sum(
        len(tokenizer.encode(t, add_special_tokens=False)) for t in ("The answer is 4.", "I am fine.")
    )


def test_a_sample_without_stored_targets_gets_empty_rows_and_trains_by_cross_entropy_alone(
    tokenizer,
) -> None:
    scored = build(tokenizer, generated(tokenizer, "The answer is 4."))
    assert scored.teacher_top_ids is not None
    held_out = Sample(scored.input_ids, scored.target_mask, "eval.jsonl:1", scored.prompt_length)
    extras = SparseKD.micro_batch_extras([held_out, scored])
    assert extras["top_ids"].shape == (2 * scored.num_targets, 2)
    assert (extras["top_ids"][: scored.num_targets] == -1).all()
    assert torch.equal(extras["top_ids"][scored.num_targets :], torch.tensor(scored.teacher_top_ids.tolist()))


def _case(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    n, vocab, width, k = 13, 40, 6, 4
    hidden = torch.randn(n, width, dtype=torch.float64, generator=generator, requires_grad=True)
    head = torch.randn(vocab, width, dtype=torch.float64, generator=generator, requires_grad=True)
    labels = torch.randint(0, vocab, (n,), generator=generator)
    labels[4] = IGNORE_INDEX
    top_ids = torch.stack([torch.randperm(vocab, generator=generator)[:k] for _ in range(n)])
    top_ids[2, 2:] = -1  # the server named fewer than k
    top_ids[7] = -1  # no teacher distribution (end of turn)
    teacher = torch.log_softmax(torch.randn(n, vocab, dtype=torch.float64, generator=generator), -1)
    return hidden, head, labels, top_ids, teacher.gather(-1, top_ids.clamp(min=0))


@pytest.mark.parametrize("add_tail", [True, False])
@pytest.mark.parametrize("chunk_size", [3, None])
def test_the_fused_loss_is_the_plain_sparse_kd_and_ce_mixture_gradients_included(
    add_tail: bool, chunk_size: int | None
) -> None:
    hidden, head, labels, top_ids, top_logprobs = _case()
    fused = fused_sparse_kd_loss(
        hidden,
        head,
        labels,
        top_ids,
        top_logprobs,
        kd_ratio=0.7,
        add_tail=add_tail,
        normalizer=9.0,
        chunk_size=chunk_size,
    )
    kept, valid = labels != IGNORE_INDEX, top_ids >= 0
    logits = hidden @ head.T
    kd = sparse_kd_loss(
        logits[kept], top_ids[kept].clamp(min=0), top_logprobs[kept], valid[kept], add_tail=add_tail
    )
    kd = torch.where(valid[kept].any(-1), kd, 0.0)
    ce = F.cross_entropy(logits[kept], labels[kept], reduction="sum")
    plain = (0.3 * ce + 0.7 * kd.sum()) / 9.0
    torch.testing.assert_close(fused.loss, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.kd_sum, kd.sum().detach())
    assert fused.kd_per_position is not None
    assert fused.kd_per_position[4] == 0 and fused.kd_per_position[7] == 0, "masked and empty rows count 0"
    for got, want in zip(
        torch.autograd.grad(fused.loss, (hidden, head)),
        torch.autograd.grad(plain, (hidden, head)),
        strict=True,
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_registered_algorithm_reads_kd_ratio_and_loss_add_tail_from_the_spec() -> None:
    hidden, head, labels, top_ids, top_logprobs = _case(1)
    distillation = DistillationSpec(algorithm="sparseKd", kd_ratio=1.0, loss_add_tail=False)
    algorithm = ALGORITHMS.get("sparseKd")(
        AlgorithmContext(KDConfig.from_spec(distillation), 6, None, distillation=distillation)
    )
    assert isinstance(algorithm, SparseKD) and SparseKD.sparse_targets
    output = algorithm(
        LossInputs(hidden, head, None, None, labels, 1.0, {"top_ids": top_ids, "top_logprobs": top_logprobs})
    )
    kept, valid = labels != IGNORE_INDEX, top_ids >= 0
    kd = sparse_kd_loss(
        (hidden @ head.T)[kept], top_ids[kept].clamp(min=0), top_logprobs[kept], valid[kept], add_tail=False
    )
    torch.testing.assert_close(output.loss, torch.where(valid[kept].any(-1), kd, 0.0).sum())
