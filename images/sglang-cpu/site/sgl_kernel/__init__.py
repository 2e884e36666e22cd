"""A stand-in for `sgl_kernel`, SGLang's compiled kernel package, whose CPU build is not on PyPI (PyPI's
`sglang-kernel` is CUDA-only). With `SGLANG_USE_CPU_ENGINE=1` SGLang 0.5.23 imports a few of its names at
module level (`kernels/ops/kvcache/cache_move.py:10`, `srt/mem_cache/allocation.py:46`, speculative
helpers) but calls none of them on the paths the tests run: every layer runs SGLang's `forward_native`
because `torch.ops.sgl_kernel` is absent (`cpu_has_amx_support()` is then False).

Every public name is a function that raises when called, so a test that reached a kernel would fail instead
of passing through a stand-in. Only the submodules SGLang imports from exist.
"""

from collections.abc import Callable
from typing import Any


class SGLKernelStandIn(NotImplementedError):
    pass


def stand_in(module: str, name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise SGLKernelStandIn(
            f"{module}.{name} was called: sgl_kernel is an import-only stand-in in the SGLang-on-CPU test "
            "environment (images/sglang-cpu/), so this path needs SGLang's compiled kernels"
        )

    call.__name__ = call.__qualname__ = name
    return call


def __getattr__(name: str) -> Callable[..., Any]:
    if name.startswith("_"):
        raise AttributeError(name)
    return stand_in(__name__, name)
