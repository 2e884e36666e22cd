"""The wire format of teacher hidden states between Ray actors.

Ray hands numpy arrays from the object store to readers without a copy (pickle protocol 5 out-of-band
buffers), while a torch tensor is pickled into a byte string. numpy has no bfloat16, so a bf16 tensor
travels as its raw 16-bit pattern and is reinterpreted on arrival: no conversion, no rounding, no copy.
"""

import warnings
from dataclasses import dataclass

import numpy as np
import torch

_VIEW_DTYPES = {torch.bfloat16: torch.int16, torch.float16: torch.int16}


@dataclass(frozen=True)
class WireTensor:
    array: np.ndarray
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


def to_wire(tensor: torch.Tensor) -> WireTensor:
    tensor = tensor.detach().to("cpu").contiguous()
    view = _VIEW_DTYPES.get(tensor.dtype)
    array = (tensor.view(view) if view is not None else tensor).numpy()
    return WireTensor(array=array, dtype=str(tensor.dtype).removeprefix("torch."))


def from_wire(wire: WireTensor) -> torch.Tensor:
    """A read-only view of the object-store buffer: the receivers only read hidden states."""
    dtype = getattr(torch, wire.dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(wire.array)
    return tensor.view(dtype) if dtype in _VIEW_DTYPES else tensor
