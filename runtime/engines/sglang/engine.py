"""The one place that calls SGLang: an offline `sglang.Engine` behind plain methods, and the trainer's side
of the weight-sync group (NCCL, gloo on the CPU).

Every call passes literal keywords whose values come from `engines.sglang.args` and `engines.weight_sync`;
`tests/runtime/engines/sglang/` checks each class, method and keyword against the pinned release's source and
fails if other code reaches the engine. SGLang is imported when it is first needed, never by importing this
module.

SGLang answers weight-update calls with `(success, message)` instead of raising; these methods raise
`SGLangError` on a failure, so a rejected update cannot pass silently.
"""

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from kubedistill.runtime.engines.sglang.hidden_states import (
    PATCHED_KEYWORDS,
    keyword_only_parameters,
    shared_memory_method,
)
from kubedistill.runtime.engines.weight_sync import (
    TensorMeta,
    WeightSyncGroup,
    process_group_backend,
    tcp_init_method,
)

INSTALL_HINT = "pip install 'kubedistill[sglang]'"

KV_CACHE = "kv_cache"
WEIGHTS = "weights"
CUDA_GRAPH = "cuda_graph"
ALL_MEMORY = (KV_CACHE, WEIGHTS, CUDA_GRAPH)
"""SGLang's memory-occupation tags (`sglang.srt.constants.GPU_MEMORY_ALL_TYPES`)."""

_engines_in_this_process: set[int] = set()
"""The running `SGLangEngine`s of this process (at most one: see `SGLangEngine.shutdown`)."""


class SGLangNotInstalled(ImportError):
    pass


class SGLangError(RuntimeError):
    pass


def require_sglang() -> None:
    try:
        import sglang  # noqa: F401
    except ImportError as error:
        raise SGLangNotInstalled(
            f"the SGLang backend needs SGLang, which is not installed here ({error}); install it with "
            f"{INSTALL_HINT} (GPU images only), or set backend: transformers"
        ) from error


class SGLangEngine:
    """An `Engine` started with `server_args`, and which of its memory is released.

    With `hidden_states_in_shared_memory`, its scheduler processes hand prefill hidden states back as
    tensors in shared memory (`kubedistill.runtime.engines.sglang.hidden_states`), through the engine's own
    hook for a custom scheduler process (`Engine.run_scheduler_process_func`, SGLang 0.5.23
    `srt/entrypoints/engine.py:266`, a picklable function the spawned children import).
    """

    def __init__(
        self,
        server_args: dict[str, Any],
        environment: Mapping[str, str],
        *,
        hidden_states_in_shared_memory: bool = False,
    ) -> None:
        if _engines_in_this_process:
            raise SGLangError(
                "an SGLang engine already runs in this process; each needs a process of its own (an actor), "
                "since shutting one down kills every child process of its parent, the other's included"
            )
        # Before SGLang's first import: some of it (the CPU switch among them) is read and cached at import.
        os.environ.update(environment)
        require_sglang()
        from sglang.srt.entrypoints.engine import Engine

        if hidden_states_in_shared_memory:
            # Still named Engine: the tests check the keywords of the one `Engine(...)` call.
            Engine = type(
                "SharedMemoryHiddenStatesEngine",
                (Engine,),
                {"run_scheduler_process_func": staticmethod(run_scheduler_process)},
            )
        self._engine = Engine(**server_args)
        _engines_in_this_process.add(id(self))
        self._released: set[str] = set()
        self._weights_were_released = False

    def generate(
        self,
        *,
        input_ids: list[list[int]],
        sampling_params: dict[str, Any],
        return_hidden_states: bool,
        rid: list[str] | None = None,
        image_data: list[list[dict[str, Any]]] | None = None,
    ) -> list[dict[str, Any]]:
        # image_data: `args.image_data_for` (None: no request has images, SGLang's own default).
        return self._engine.generate(
            input_ids=input_ids,
            sampling_params=sampling_params,
            return_hidden_states=return_hidden_states,
            rid=rid,
            image_data=image_data,
        )

    def begin_weight_update(self) -> None:
        """Open a weight-update session: the weights are resident (woken alone if released) until
        `end_weight_update`. One session per sync, however many buckets it loads."""
        self._weights_were_released = WEIGHTS in self._released
        self.resume([WEIGHTS])
        _succeeded("begin_weight_update", self._engine.begin_weight_update())

    def end_weight_update(self) -> None:
        """Close the session, flush the cache, and release the weights again if they were released."""
        _succeeded("end_weight_update", self._engine.end_weight_update())
        # Releasing the KV cache already flushed it; flushing released memory would touch freed pages.
        if KV_CACHE not in self._released:
            flushed = self._engine.flush_cache()
            if not flushed.success:
                raise SGLangError(f"flush_cache: {flushed.message}")
        if self._weights_were_released:
            self.release([WEIGHTS])

    @contextmanager
    def weight_update(self) -> Iterator[None]:
        """A whole weight-update session inside one call."""
        self.begin_weight_update()
        try:
            yield
        finally:
            self.end_weight_update()

    def load_tensors(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        _succeeded(
            "update_weights_from_tensor",
            self._engine.update_weights_from_tensor(named_tensors=named_tensors, flush_cache=False),
        )

    def join_weight_sync_group(self, group: WeightSyncGroup, device: str) -> None:
        """Join with the engine's ranks, whose tensors are on `device` ("cuda", or "cpu": SGLang receives
        into `torch.empty(..., device=self.device)` and broadcasts over the group's backend, SGLang 0.5.23
        `srt/model_executor/model_runner_components/weight_updater.py:100-144,280-296`)."""
        _succeeded(
            "init_weights_update_group",
            self._engine.init_weights_update_group(
                master_address=group.master_address,
                master_port=group.master_port,
                rank_offset=group.rank_offset,
                world_size=group.world_size,
                group_name=group.group_name,
                backend=process_group_backend(device),
            ),
        )

    def receive_tensors(self, metas: list[TensorMeta], group_name: str) -> None:
        _succeeded(
            "update_weights_from_distributed",
            self._engine.update_weights_from_distributed(
                names=[meta.name for meta in metas],
                dtypes=[meta.dtype for meta in metas],
                shapes=[list(meta.shape) for meta in metas],
                group_name=group_name,
                flush_cache=False,
            ),
        )

    def release(self, tags: Sequence[str]) -> None:
        # SGLang's resume removes each tag from a set: resuming (or releasing) twice fails in its scheduler.
        pending = [tag for tag in tags if tag not in self._released]
        if pending:
            self._engine.release_memory_occupation(tags=pending)
            self._released.update(pending)

    def resume(self, tags: Sequence[str]) -> None:
        pending = [tag for tag in tags if tag in self._released]
        if pending:
            self._engine.resume_memory_occupation(tags=pending)
            self._released.difference_update(pending)

    def shutdown(self) -> None:
        # SGLang 0.5.23 `Engine.shutdown` ends in `kill_process_tree(os.getpid(), include_parent=False)`
        # (`srt/entrypoints/engine.py:1491`): every child of this process, whichever engine started it.
        try:
            self._engine.shutdown()
        finally:
            _engines_in_this_process.discard(id(self))


def join_weight_sync_group(group: WeightSyncGroup, device: str) -> torch.distributed.ProcessGroup:
    """The trainer's side of `SGLangEngine.join_weight_sync_group`, with the helper SGLang's engine ranks use:
    a process group outside the trainer's default one, whose ranks are the group's own; `device` is where
    the trainer's tensors are ("cuda" or "cpu")."""
    require_sglang()
    from sglang.srt.utils.common import init_custom_process_group

    return init_custom_process_group(
        backend=process_group_backend(device),
        init_method=tcp_init_method(group.master_address, group.master_port),
        world_size=group.world_size,
        rank=group.rank_offset,
        group_name=group.group_name,
    )


def run_scheduler_process(*args: Any, **kwargs: Any) -> None:
    """SGLang's scheduler process with `_append_prefill_hidden_states` replaced by `shared_memory_method`
    (runs in the spawned child; the arguments are SGLang's)."""
    # From its own module: SGLang 0.5.23's `sglang.srt.distributed` no longer re-exports it
    # (`srt/distributed/parallel_state.py:3489-3560`: `__all__` leaves out every name of `_CONTEXT_NAME_OF`),
    # and an ImportError here kills the scheduler ("Rank 0 scheduler died during initialization").
    from sglang.srt.distributed.parallel_state import get_tensor_model_parallel_rank
    from sglang.srt.managers.scheduler import run_scheduler_process as run_sglang_scheduler_process
    from sglang.srt.managers.scheduler_components.batch_result_processor import (
        SchedulerBatchResultProcessor,
    )

    original = SchedulerBatchResultProcessor._append_prefill_hidden_states
    found = keyword_only_parameters(original)
    if found != PATCHED_KEYWORDS:
        raise SGLangError(
            f"SGLang's SchedulerBatchResultProcessor._append_prefill_hidden_states takes {found}, not "
            f"{PATCHED_KEYWORDS}: this SGLang is not the release kubedistill was checked against"
        )
    SchedulerBatchResultProcessor._append_prefill_hidden_states = shared_memory_method(
        original, get_tensor_model_parallel_rank
    )
    run_sglang_scheduler_process(*args, **kwargs)


def _succeeded(call: str, result: tuple[bool, str]) -> None:
    success, message = result
    if not success:
        raise SGLangError(f"{call}: {message}")
