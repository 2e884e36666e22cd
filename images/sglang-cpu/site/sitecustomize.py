"""Loaded by every Python process of the SGLang-on-CPU test environment (this folder is on its PYTHONPATH):
the test process, its Ray workers and SGLang's scheduler processes alike.

PyPI's torchvision 0.28.0 is built against CUDA torch: beside torch 2.13.0+cpu its `_C` extension does not
load, and `torchvision/_meta_registrations.py:163,177` then fails registering fake kernels for
`torchvision::nms` and `torchvision::qnms`, ops that extension would have defined. SGLang imports torchvision
at module level (`srt/multimodal/internvl_utils.py:5`), and transformers' fast Qwen-VL image processors use
its transforms. Defining the two schemas first, with no kernel, lets torchvision import; calling either op
still raises (no kernel is registered), so nothing passes through them. The runtime image has the torchvision
built for its own torch and needs none of this.
"""

import importlib.abc
import sys
from types import ModuleType


class _DefineTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: ModuleType | None = None) -> None:
        if name == "torchvision":
            sys.meta_path.remove(self)
            import torch

            for op in ("nms", "qnms"):
                if not hasattr(torch.ops.torchvision, op):
                    torch.library.define(
                        f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                    )
        return None


sys.meta_path.insert(0, _DefineTorchvisionOps())
