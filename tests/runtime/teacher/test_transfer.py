"""The wire format of hidden states: exact, for every dtype the teacher produces."""

import pytest
import torch

from kubedistill.runtime.teacher.transfer import from_wire, to_wire


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_hidden_states_cross_the_wire_bit_for_bit(dtype: torch.dtype) -> None:
    hidden = torch.randn(37, 24).to(dtype)
    wire = to_wire(hidden)
    back = from_wire(wire)
    assert back.dtype == dtype
    assert torch.equal(
        back.view(torch.int16 if dtype != torch.float32 else torch.int32),
        hidden.view(torch.int16 if dtype != torch.float32 else torch.int32),
    )


def test_bf16_travels_as_a_numpy_array_of_half_the_float32_size() -> None:
    wire = to_wire(torch.randn(100, 64).to(torch.bfloat16))
    assert wire.nbytes == 100 * 64 * 2
    assert type(wire.array).__module__ == "numpy"
