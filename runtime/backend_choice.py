"""Which inference engine a teacher or rollout group runs on."""

import importlib.util

import torch

from kubedistill.api.spec import Backend
from kubedistill.runtime.sglang_args import EnginePlacement


def resolve_backend(requested: Backend) -> Backend:
    """`auto` is SGLang where it can run (a GPU and the `sglang` extra), transformers elsewhere."""
    if requested != Backend.AUTO:
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("sglang") is not None:
        return Backend.SGLANG
    return Backend.TRANSFORMERS


def engine_device(placement: EnginePlacement) -> torch.device:
    """The device of a transformers engine: the first GPU of its placement (a colocated engine sees the
    node's every GPU; one with a GPU of its own sees just that one, as GPU 0), else the CPU."""
    return torch.device("cuda", placement.base_gpu_id) if torch.cuda.is_available() else torch.device("cpu")
