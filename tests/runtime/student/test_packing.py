"""Padding-free packing (`spec.training.packing`): a micro-batch's samples in one row, positions restarting
per sample, and the same losses and gradients as the padded micro-batch of the same samples, in float64 for
every algorithm that runs the student's forward (off- and on-policy share it; sft is the same forward without
a teacher)."""

from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from kubedistill.api.spec import Attention, DataSource, DataSpec, DistillationSpec, Mode
from kubedistill.runtime.algorithms.base import Algorithm, AlgorithmContext
from kubedistill.runtime.algorithms.dskd import DualSpaceKD
from kubedistill.runtime.algorithms.simple_ctkd import SimpleCrossTokenizerKD
from kubedistill.runtime.algorithms.vanilla import VanillaKD
from kubedistill.runtime.data.load import load_samples
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.demo.tiny import build_tokenizer
from kubedistill.runtime.losses.config import KDConfig
from kubedistill.runtime.models.loading import load_causal_lm, load_lm_head_weight, load_tokenizer
from kubedistill.runtime.student import packed_attention
from kubedistill.runtime.student.batch import MicroBatch
from kubedistill.runtime.student.module import DistillationModule
from kubedistill.runtime.student.packed_attention import use_packed_attention
from tests.runtime.algorithms.conftest import demo_texts
from tests.runtime.conftest import TinyWorld

TEACHER_VOCABULARY = 400
TEACHER_WIDTH = 12
PAD = 0


def sample(tokens: list[int], prompt: int) -> Sample:
    return Sample(
        input_ids=np.array(tokens, dtype=np.int32),
        target_mask=np.arange(len(tokens)) >= prompt,
        source="t",
        prompt_length=prompt,
    )


def test_a_packed_row_holds_each_sample_once_with_positions_restarting() -> None:
    samples = [sample([5, 6, 7], 1), sample([8], 1), sample([9, 10, 11, 12], 2)]
    batch = MicroBatch.from_samples(samples, PAD, packed=True)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 12]]
    assert batch.position_ids is not None
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 0, 1, 2, 3]]
    assert batch.num_tokens == batch.num_slots == 8


def test_a_packed_row_has_the_padded_rows_loss_positions_labels_and_order() -> None:
    samples = [sample([5, 6, 7], 1), sample([8], 1), sample([9, 10, 11, 12], 2)]
    padded = MicroBatch.from_samples(samples, PAD)
    packed = MicroBatch.from_samples(samples, PAD, packed=True)
    assert packed.labels.tolist() == padded.labels.tolist() == [6, 7, 11, 12]
    # The token at each loss position, in the same order: the teacher's states pair with them unchanged.
    assert (
        packed.input_ids[packed.rows, packed.columns].tolist()
        == padded.input_ids[padded.rows, padded.columns].tolist()
    )
    assert padded.num_slots == 12
    assert not padded.packed


# -- float64: a packed step against the padded step --------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world's text with a larger vocabulary: a tokenizer that splits it otherwise."""
    path = tmp_path_factory.mktemp("teacher-tokenizer")
    build_tokenizer(demo_texts(), vocab_size=TEACHER_VOCABULARY).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def same_samples(tiny: TinyWorld) -> list[Sample]:
    return real_samples(tiny, None)


@pytest.fixture(scope="module")
def cross_samples(tiny: TinyWorld, teacher_tokenizer: Path) -> list[Sample]:
    return real_samples(tiny, teacher_tokenizer)


def real_samples(tiny: TinyWorld, teacher_tokenizer: Path | None, count: int = 5) -> list[Sample]:
    """Chats of different lengths from the tiny world's data, tokenised as a job does."""
    source = DataSource(path=str(tiny.train))
    spec = DataSpec(train=source, max_length=96, prompt_max_length=32)
    loaded = load_samples(
        source,
        spec,
        load_tokenizer(str(tiny.student)),
        mode=Mode.OFF_POLICY,
        teacher_tokenizer=None if teacher_tokenizer is None else load_tokenizer(str(teacher_tokenizer)),
        cross_tokenizer=teacher_tokenizer is not None,
    )
    chosen = loaded.samples[:count]
    assert len({len(s.input_ids) for s in chosen}) > 1, "the padded rows must hold padding"
    return chosen


def float64_module(
    tiny: TinyWorld,
    kind: type[Algorithm],
    teacher: str | None,
    distillation: dict[str, str] | None = None,
    teacher_tokenizer: Path | None = None,
    attention: Attention = Attention.SDPA,
) -> tuple[DistillationModule, int]:
    """The tiny student in float64 with the algorithm `kind`; the teacher's head is the tiny teacher's
    (`same`), a random one over the second tokenizer's vocabulary (`cross`), or none (sft). Its attention is
    the packed one over `attention`, as a packing job's (`build_module`)."""
    torch.manual_seed(0)
    student = load_causal_lm(str(tiny.student), torch.float64, attention)
    use_packed_attention(student, str(attention))
    head = None
    if teacher == "same":
        head = load_lm_head_weight(str(tiny.teacher), torch.float64)
    elif teacher == "cross":
        head = torch.randn(TEACHER_VOCABULARY, TEACHER_WIDTH, dtype=torch.float64)
    spec = DistillationSpec.model_validate(distillation or {})
    context = AlgorithmContext(
        config=replace(KDConfig.from_spec(spec), kd_ratio=0.0 if head is None else 0.5),
        student_hidden_size=int(student.config.hidden_size),
        teacher_hidden_size=None if head is None else int(head.shape[1]),
        student_tokenizer=str(tiny.student),
        teacher_tokenizer=None if head is None else str(teacher_tokenizer or tiny.student),
        distillation=spec,
    )
    module = DistillationModule(student, kind(context).double(), head, unsharded_through_step=True)
    return module, 0 if head is None else int(head.shape[1])


def loss_and_gradients(
    module: DistillationModule, batch: MicroBatch, teacher_hidden: torch.Tensor | None, normalizer: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module(batch, teacher_hidden, normalizer).loss.loss
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), gradients


CASES: dict[str, tuple[type[Algorithm], str | None, dict[str, str]]] = {
    "offPolicy fkl": (VanillaKD, "same", {}),
    "offPolicy jsd": (VanillaKD, "same", {"loss": "jsd"}),
    "sft": (VanillaKD, None, {}),
    "simpleCtkd": (SimpleCrossTokenizerKD, "cross", {"algorithm": "simpleCtkd"}),
    "dskd eta": (DualSpaceKD, "cross", {"algorithm": "dskd", "dskdTokenAlign": "eta"}),
    "dskd cma": (DualSpaceKD, "cross", {"algorithm": "dskd", "dskdTokenAlign": "cma"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_packed_step_has_the_padded_steps_loss_and_gradients_in_float64(
    tiny: TinyWorld,
    teacher_tokenizer: Path,
    same_samples: list[Sample],
    cross_samples: list[Sample],
    case: str,
) -> None:
    algorithm, teacher, distillation = CASES[case]
    cross = teacher == "cross"
    module, teacher_width = float64_module(
        tiny, algorithm, teacher, distillation, teacher_tokenizer if cross else None
    )
    samples = cross_samples if cross else same_samples
    extras = algorithm.micro_batch_extras(samples)
    padded = MicroBatch.from_samples(samples, PAD, extras)
    packed = MicroBatch.from_samples(samples, PAD, extras, packed=True)
    assert packed.num_slots < padded.num_slots
    positions = sum(len(s.teacher_loss_positions()) for s in samples)
    generator = torch.Generator().manual_seed(1)
    hidden = None if teacher is None else torch.randn(positions, teacher_width, generator=generator).double()
    normalizer = float(padded.num_targets + 7)  # a global batch's other micro-batches have targets too

    with mock.patch.object(
        packed_attention, "segmented_attention", wraps=packed_attention.segmented_attention
    ) as segmented:
        padded_loss, padded_gradients = loss_and_gradients(module, padded, hidden, normalizer)
        assert segmented.call_count == 0, "padded rows run sdpa under their mask"
        packed_loss, packed_gradients = loss_and_gradients(module, packed, hidden, normalizer)
    # Every layer of the packed step attended per sample, over the lengths found once for the micro-batch.
    assert segmented.call_count == module.student.config.num_hidden_layers
    lengths = tuple(len(s.input_ids) for s in samples)
    assert all(call.args[3] == lengths for call in segmented.call_args_list)

    assert padded_loss.item() > 0.0
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-10, atol=0.0)
    assert packed_gradients.keys() == padded_gradients.keys()
    assert len(padded_gradients) >= len(list(module.student.parameters()))
    for name, gradient in padded_gradients.items():
        torch.testing.assert_close(packed_gradients[name], gradient, rtol=1e-9, atol=1e-13, msg=name)


def test_without_restarting_positions_the_samples_of_a_row_would_see_each_other(
    tiny: TinyWorld, same_samples: list[Sample]
) -> None:
    """The control: the same row with positions counting on (as one long sequence) changes the states of
    every sample after the first, so the equality above rests on the restarting positions."""
    module, _ = float64_module(tiny, VanillaKD, None)
    samples = same_samples[:3]
    packed = MicroBatch.from_samples(samples, PAD, packed=True)
    length = packed.num_slots
    run_on = MicroBatch(
        packed.input_ids,
        packed.attention_mask,
        packed.rows,
        packed.columns,
        packed.labels,
        position_ids=torch.arange(length).unsqueeze(0),
    )
    with torch.no_grad():
        apart = module.student_hidden_states(packed)[0]
        together = module.student_hidden_states(run_on)[0]
    first = len(samples[0].input_ids)
    torch.testing.assert_close(apart[:first], together[:first], rtol=1e-10, atol=0.0)
    assert not torch.allclose(apart[first:], together[first:])


@pytest.mark.parametrize("attention", [Attention.SDPA, Attention.EAGER])
def test_a_first_sample_of_one_token_and_samples_of_one_token_are_kept_apart(
    tiny: TinyWorld, attention: Attention
) -> None:
    """A sequence starts where a position is not its predecessor plus one (as transformers finds them): a
    first sequence of one token (positions 0, 0, 1, ...) and two single tokens in a row (0, 0) are found too;
    the packed row matches the padded rows under sdpa's and eager's masks alike (eager's softmax runs in
    float32 whatever the dtype, models/qwen3/modeling_qwen3.py:194 @ transformers 5.25: float32's
    tolerance)."""
    module, _ = float64_module(tiny, VanillaKD, None, attention=attention)
    samples = [sample([17], 1), sample([23], 1), sample([40, 41, 42, 43], 1), sample([50, 51], 1)]
    padded = MicroBatch.from_samples(samples, PAD)
    packed = MicroBatch.from_samples(samples, PAD, packed=True)
    with torch.no_grad():
        rows = module.student_hidden_states(padded)
        row = module.student_hidden_states(packed)[0]
    real = padded.attention_mask.bool()
    if attention == Attention.SDPA:
        torch.testing.assert_close(row, rows[real], rtol=1e-10, atol=1e-14)
    else:
        torch.testing.assert_close(row, rows[real], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["offPolicy fkl", "offPolicy jsd"])
def test_a_packed_step_gives_each_sample_the_padded_steps_mean_divergence_in_float64(
    tiny: TinyWorld, same_samples: list[Sample], case: str
) -> None:
    """The per-sample figures an on-policy round's responses carry: the same packed or padded, and weighted
    by each sample's targets they add up to the step's divergence, and so to its loss."""
    algorithm, teacher, distillation = CASES[case]
    module, teacher_width = float64_module(tiny, algorithm, teacher, distillation)
    padded = MicroBatch.from_samples(same_samples, PAD)
    packed = MicroBatch.from_samples(same_samples, PAD, packed=True)
    positions = sum(len(s.teacher_loss_positions()) for s in same_samples)
    hidden = torch.randn(positions, teacher_width, generator=torch.Generator().manual_seed(1)).double()
    normalizer = float(padded.num_targets + 7)

    padded_out = module(padded, hidden, normalizer)
    packed_out = module(packed, hidden, normalizer)

    assert len(padded_out.sample_divergences) == len(same_samples)
    means = [mean for mean in padded_out.sample_divergences if mean is not None]
    assert len(means) == len(same_samples) and all(mean > 0.0 for mean in means)
    assert packed_out.sample_divergences == pytest.approx(means, rel=1e-10, abs=0.0)
    targets = [s.num_targets for s in same_samples]
    kd_sum = sum(mean * count for mean, count in zip(means, targets, strict=True))
    loss = padded_out.loss
    assert kd_sum == pytest.approx(loss.kd_sum.item(), rel=1e-12)
    kd_ratio = module.algorithm.context.config.kd_ratio
    step_loss = ((1.0 - kd_ratio) * loss.ce_sum.item() + kd_ratio * kd_sum) / normalizer
    assert step_loss == pytest.approx(loss.loss.item(), rel=1e-12)


def test_an_algorithm_over_aligned_positions_gives_no_per_sample_divergence(
    tiny: TinyWorld, teacher_tokenizer: Path, cross_samples: list[Sample]
) -> None:
    module, teacher_width = float64_module(
        tiny, SimpleCrossTokenizerKD, "cross", {"algorithm": "simpleCtkd"}, teacher_tokenizer
    )
    batch = MicroBatch.from_samples(
        cross_samples, PAD, SimpleCrossTokenizerKD.micro_batch_extras(cross_samples)
    )
    positions = sum(len(s.teacher_loss_positions()) for s in cross_samples)
    hidden = torch.randn(positions, teacher_width, generator=torch.Generator().manual_seed(1)).double()
    output = module(batch, hidden, float(batch.num_targets))
    assert output.loss.kd_sum.item() > 0.0
    assert output.sample_divergences == [None] * len(cross_samples)
