"""The SGLang teacher backend on the real engine (CPU): hidden states through its replaced scheduler and
shared memory, against the transformers teacher on the same tiny model and the same token ids.

One fp32 engine for the module (an engine takes ~15-25 s to start here; the bf16 one has a module of its
own, since one process runs one engine). The model is the tiny teacher the whole-job tests train from.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from kubedistill.api.spec import Precision, TeacherSpec
from kubedistill.runtime.demo.tiny import build_model
from kubedistill.runtime.engines.layout import single_node_placement
from kubedistill.runtime.engines.sglang.hidden_states import RID_PREFIX, hidden_state_file
from kubedistill.runtime.engines.sglang.teacher import SGLangTeacher
from kubedistill.runtime.engines.transformers.teacher import TransformersTeacher
from kubedistill.runtime.models.loading import load_tokenizer
from kubedistill.runtime.teacher.backend import TeacherBatch
from tests.runtime.conftest import TEACHER, TinyWorld
from tests.runtime.engines.sglang.weights import push_weights

pytestmark = pytest.mark.sglang

ENGINE_SPEC = TeacherSpec(mem_fraction_static=0.3)
"""On the CPU SGLang sizes its KV cache from the machine's free RAM; 0.3 starts reliably on these machines."""
FP32_TOLERANCE = 1e-6
"""fp32: equal up to float32 rounding. The values are of order 1 (at most ~4 here, where a float32 step is
4.8e-7); SGLang runs the batch ragged and transformers padded, so sums go in another order. Measured 4.8e-7;
one prompt alone is bit-equal."""


def teacher_engine(tiny: TinyWorld, precision: Precision) -> Iterator[SGLangTeacher]:
    teacher = SGLangTeacher(
        ENGINE_SPEC, str(tiny.teacher), single_node_placement("cpu"), colocate=False, precision=precision
    )
    try:
        yield teacher
    finally:
        teacher.close()


@pytest.fixture(scope="module")
def fp32_engine(tiny: TinyWorld) -> Iterator[SGLangTeacher]:
    yield from teacher_engine(tiny, Precision.FP32)


@pytest.fixture(scope="module")
def sequences(tiny: TinyWorld) -> list[list[int]]:
    """Mixed lengths, 3 to 60 tokens, from the job's own data."""
    tokenizer = load_tokenizer(str(tiny.teacher))
    text = tiny.train.read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [ids[0:60], ids[100:103], ids[200:237], ids[300:311]]


def reference(model_path: Path, batch: TeacherBatch, dtype: torch.dtype) -> torch.Tensor:
    return TransformersTeacher(str(model_path), dtype, torch.device("cpu")).hidden_states(batch)


def every_position(sequences: list[list[int]]) -> TeacherBatch:
    return TeacherBatch(sequences=sequences, positions=[list(range(len(s))) for s in sequences])


def loss_positions(sequences: list[list[int]]) -> TeacherBatch:
    """What a trainer asks for: the positions before each target token, here every third one, and none of
    one sequence (all prompt)."""
    positions = [list(range(len(s) // 2, len(s) - 1, 3)) for s in sequences]
    positions[1] = []
    return TeacherBatch(sequences=sequences, positions=positions)


def files_left() -> list[Path]:
    return list(hidden_state_file(RID_PREFIX).parent.glob(f"{RID_PREFIX}*"))


@pytest.mark.parametrize("make_batch", [every_position, loss_positions])
def test_fp32_hidden_states_equal_the_transformers_teachers_exactly(
    make_batch, fp32_engine: SGLangTeacher, sequences: list[list[int]], tiny: TinyWorld
) -> None:
    batch = make_batch(sequences)
    hidden = fp32_engine.hidden_states(batch)
    assert hidden.dtype == torch.float32
    assert hidden.shape == (batch.num_positions, TEACHER.hidden_size)
    torch.testing.assert_close(
        hidden, reference(tiny.teacher, batch, torch.float32), rtol=0, atol=FP32_TOLERANCE
    )
    assert files_left() == []


def test_the_engine_reports_the_models_hidden_size(fp32_engine: SGLangTeacher) -> None:
    assert fp32_engine.hidden_size == TEACHER.hidden_size


def test_an_empty_batch_needs_no_request(fp32_engine: SGLangTeacher) -> None:
    assert fp32_engine.hidden_states(TeacherBatch(sequences=[], positions=[])).shape == (
        0,
        TEACHER.hidden_size,
    )


def test_positions_outside_a_sequence_are_refused_and_leave_no_file(
    fp32_engine: SGLangTeacher, sequences: list[list[int]]
) -> None:
    positions = [[0], [len(sequences[1])], [0], [0]]
    with pytest.raises(ValueError, match=r"sequence 1: positions outside"):
        fp32_engine.hidden_states(TeacherBatch(sequences=sequences, positions=positions))
    assert files_left() == []


@pytest.mark.parametrize(
    ("length", "error"),
    [
        # Within the model's context (1024) but past the scheduler's input limit (context - 6): SGLang's
        # scheduler aborts that request after the others were scheduled (`managers/tp_worker.py:568-572`,
        # `managers/utils.py:259-285`), and the engine raises its 400 as a ValueError.
        (1020, r"Input length \(1020 tokens\) exceeds the maximum allowed length \(1018 tokens\)"),
        # Past the context: SGLang's tokenizer manager refuses the whole batch (`tokenizer_manager.py:1336`).
        (1100, r"The input \(1100 tokens\) is longer than the model's context length \(1024 tokens\)"),
    ],
)
def test_a_batch_sglang_aborts_or_refuses_is_an_error_saying_why_and_leaves_no_file(
    length: int, error: str, fp32_engine: SGLangTeacher, sequences: list[list[int]], tiny: TinyWorld
) -> None:
    too_long = (sequences[0] * 40)[:length]
    batch = every_position([sequences[0], too_long, sequences[2], sequences[3]])
    with pytest.raises(ValueError, match=error):
        fp32_engine.hidden_states(batch)
    assert files_left() == []
    # The engine goes on serving.
    healthy = every_position(sequences[:1])
    torch.testing.assert_close(
        fp32_engine.hidden_states(healthy),
        reference(tiny.teacher, healthy, torch.float32),
        rtol=0,
        atol=FP32_TOLERANCE,
    )


def test_pushed_weights_replace_the_model_and_sleep_and_wake_keep_them(
    fp32_engine: SGLangTeacher, sequences: list[list[int]], tiny: TinyWorld, tmp_path: Path
) -> None:
    """Self-distillation's path: student rank 0 pushes CPU tensors in buckets, in one update session."""
    tokenizer = load_tokenizer(str(tiny.teacher))
    other = build_model(tokenizer, TEACHER, seed=5).eval()
    other.save_pretrained(tmp_path / "other")
    named = [(name, tensor.detach()) for name, tensor in other.state_dict().items()]
    batch = loss_positions(sequences)
    try:
        fp32_engine.sleep()
        push_weights(fp32_engine, named, buckets=2)
        fp32_engine.wake()
        torch.testing.assert_close(
            fp32_engine.hidden_states(batch),
            reference(tmp_path / "other", batch, torch.float32),
            rtol=0,
            atol=FP32_TOLERANCE,
        )
    finally:
        original = AutoModelForCausalLM.from_pretrained(tiny.teacher, dtype=torch.float32)
        push_weights(fp32_engine, original.state_dict().items())
    torch.testing.assert_close(
        fp32_engine.hidden_states(batch),
        reference(tiny.teacher, batch, torch.float32),
        rtol=0,
        atol=FP32_TOLERANCE,
    )
