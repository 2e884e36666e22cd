"""Loaded by every Python process of the SGLang-on-CPU test environment (this folder is on its PYTHONPATH):
the test process, its Ray workers and SGLang's scheduler processes alike.

PyPI's torchvision 0.28.0 is built against CUDA torch: beside torch 2.13.0+cpu its `_C` extension does not
load, and `torchvision/_meta_registrations.py:163,177` then fails registering fake kernels for
`torchvision::nms` and `torchvision::qnms`, ops that extension would have defined. SGLang imports torchvision
at module level (`srt/multimodal/internvl_utils.py:5`), and transformers' fast Qwen-VL image processors use
its transforms. Defining the two schemas first, with no kernel, lets torchvision import; calling either op
still raises (no kernel is registered), so nothing passes through them. The runtime image has the torchvision
built for its own torch and needs none of this.

Likewise SGLang binds a few ops of its compiled CPU kernels (`torch.ops.sgl_kernel`, whose CPU build is not
on PyPI) at module level where a module is imported on the way to its Qwen-VL image processor
(`srt/multimodal/processors/qwen_vl.py:25` imports `srt/models/qwen3_5.py`, which binds them at :283-297).
Their schemas are defined before SGLang is imported, with no kernel: the import goes through, and a call
raises. `convert_weight_packed`, whose presence turns SGLang's AMX kernels on, stays undefined.
"""

import importlib.abc
import sys
from types import ModuleType

SCHEMAS = {
    "torchvision": {
        "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    },
    "sglang": {
        op: "(Tensor x) -> Tensor"
        for op in (
            "fused_sigmoid_mul_cpu",
            "fused_qk_gemma_rmsnorm_cpu",
            "fused_qk_gemma_rmsnorm_with_gate_cpu",
            "fused_qkvzba_split_reshape_cat_contiguous_cpu",
        )
    },
}
"""Per top-level package imported: the ops to define first, as `namespace::name` schemas without kernels."""
NAMESPACES = {"torchvision": "torchvision", "sglang": "sgl_kernel"}


class _DefineOpsFirst(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.pending = set(SCHEMAS)

    def find_spec(self, name: str, path: object = None, target: ModuleType | None = None) -> None:
        if name in self.pending:
            self.pending.discard(name)
            import torch

            namespace = NAMESPACES[name]
            for op, schema in SCHEMAS[name].items():
                if not hasattr(getattr(torch.ops, namespace), op):
                    torch.library.define(f"{namespace}::{op}", schema)
        return None


sys.meta_path.insert(0, _DefineOpsFirst())
