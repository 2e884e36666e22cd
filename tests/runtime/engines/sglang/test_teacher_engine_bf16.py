"""The SGLang teacher backend on the real engine (CPU) in bf16: hidden states within bf16 rounding of the
transformers teacher's. A module of its own: `test_teacher_engine`'s fp32 engine lives as long as its module,
and one process runs one engine (`SGLangEngine` refuses a second).
"""

from collections.abc import Iterator

import pytest
import torch

from kubedistill.api.spec import Precision
from kubedistill.runtime.engines.sglang.teacher import SGLangTeacher
from tests.runtime.conftest import TinyWorld
from tests.runtime.engines.sglang.test_teacher_engine import (
    loss_positions,
    reference,
    sequences,
    teacher_engine,
)

pytestmark = pytest.mark.sglang

__all__ = ["sequences"]  # the fixture, shared with the fp32 module

BF16_TOLERANCE = 0.02
"""bf16 gap allowed, relative to the largest reference value: about two bf16 steps (2^-7 relative) of
that value. The two backends run different kernels (SGLang's forward_native, transformers' sdpa), so bf16
rounding differs; measured 0.0086 on this model."""


@pytest.fixture(scope="module")
def bf16_engine(tiny: TinyWorld) -> Iterator[SGLangTeacher]:
    yield from teacher_engine(tiny, Precision.BF16)


def test_bf16_hidden_states_equal_the_transformers_teachers_within_bf16_rounding(
    bf16_engine: SGLangTeacher, sequences: list[list[int]], tiny: TinyWorld
) -> None:
    batch = loss_positions(sequences)
    hidden = bf16_engine.hidden_states(batch)
    expected = reference(tiny.teacher, batch, torch.bfloat16)
    assert hidden.dtype == torch.bfloat16
    gap = (hidden.float() - expected.float()).abs().max() / expected.float().abs().max()
    assert gap <= BF16_TOLERANCE
