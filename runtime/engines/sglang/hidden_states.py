"""Teacher hidden states out of SGLang's scheduler as tensors, not as Python lists.

SGLang 0.5.23 turns each prefill's hidden states into nested Python floats in its scheduler processes
(`SchedulerBatchResultProcessor._append_prefill_hidden_states`,
`srt/managers/scheduler_components/batch_result_processor.py:641-672`: `.cpu().clone().tolist()`, called
from `process_batch_result_prefill` at :334-341), msgpacks them to the engine's process, where a tensor has
to be rebuilt from them: seconds and hundreds of MB of Python objects per 4096-token sequence
(`bench/transfer.py`).

Here the engine's scheduler processes run `kubedistill.runtime.engines.sglang.engine.run_scheduler_process`
(SGLang's own hook: `Engine.run_scheduler_process_func`, `srt/entrypoints/engine.py:266`, handed to every
launch site), which puts `shared_memory_method` in that method's place before the scheduler starts. For
our requests (ids starting with `RID_PREFIX`) asking for every position's states, it writes the request's
rows in the engine's dtype (bf16 or fp32, never rounded) to a file in shared memory named after the request
id, and appends an empty chunk where the list was, so SGLang's output path carries no floats. Only
tensor-parallel rank 0 writes: every rank holds the same full-width states, and rank 0's node serves the
requests. The engine's process (`read_prefill_rows`) maps the file, copies out the loss positions alone
and removes it. Other requests, and last-token capture, keep SGLang's behaviour.
`tests/runtime/engines/sglang/` checks the replaced method's shape in the wheel.
"""

import inspect
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RID_PREFIX = "kubedistill-"
PATCHED_CLASS = (
    "sglang.srt.managers.scheduler_components.batch_result_processor.SchedulerBatchResultProcessor"
)
PATCHED_METHOD = "_append_prefill_hidden_states"
PATCHED_KEYWORDS = (
    "req",
    "logits_output",
    "hidden_state_offset",
    "capture_hidden_mode",
    "extend_input_len",
    "store",
)
"""The keyword-only parameters of the method replaced (`_append_prefill_hidden_states`), in SGLang 0.5.23's
order."""


def request_ids(count: int) -> list[str]:
    """Fresh ids for a batch of requests whose hidden states come back through shared memory."""
    return [f"{RID_PREFIX}{uuid.uuid4().hex}" for _ in range(count)]


def hidden_state_file(rid: str) -> Path:
    """Where the scheduler leaves a request's rows: RAM-backed /dev/shm where there is one (Linux pods)."""
    shm = Path("/dev/shm")
    return (shm if shm.is_dir() else Path(tempfile.gettempdir())) / f"{rid}.hidden.pt"


def shared_memory_size(folder: Path = Path("/dev/shm")) -> int | None:
    """Size of this node's /dev/shm tmpfs in bytes; None where there is none (not Linux)."""
    if not folder.is_dir():
        return None
    stats = os.statvfs(folder)
    return stats.f_frsize * stats.f_blocks


def shared_memory_shortfall(shm_bytes: int, batch_tokens: int, hidden_size: int, itemsize: int) -> str | None:
    """A warning when /dev/shm (`shm_bytes`) holds less than twice the largest teacher batch, or None.

    The scheduler writes every position's rows of a batch there (`batch_tokens` x `hidden_size` x `itemsize`
    bytes) before the engine's process reads the loss positions out, and Ray's object store, which then holds
    them for the student, lives on the same tmpfs and may take up to 95% of it (Ray 2.60
    `_private/utils.py:619-624`, `resolve_object_store_memory`). A full tmpfs fails the write mid-batch."""
    needed = 2 * batch_tokens * hidden_size * itemsize
    if shm_bytes >= needed:
        return None
    return (
        f"spec.cluster.shmSize: /dev/shm holds {_gib(shm_bytes)}, less than twice the largest teacher batch "
        f"({batch_tokens} tokens x {hidden_size} x {itemsize} bytes = {_gib(needed // 2)}), which the SGLang "
        f"teacher writes there beside Ray's object store; raise shmSize to at least {_gib(needed)} or lower "
        "spec.training.microBatchSize / maxTokensPerDevice"
    )


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def write_prefill_rows(rows: torch.Tensor, rid: str) -> None:
    """The scheduler's side: a copy of exactly these rows (a slice would save its whole batch's storage),
    renamed into place so that a reader never sees half a file."""
    path = hidden_state_file(rid)
    partial = path.with_suffix(".partial")
    torch.save(rows.detach().to("cpu", copy=True), partial)
    partial.replace(path)


def read_prefill_rows(rid: str, positions: list[int], length: int) -> torch.Tensor:
    """The engine process's side: the rows at `positions` of a `length`-token prefill; the file is removed."""
    path = hidden_state_file(rid)
    if not path.is_file():
        raise ValueError(
            f"request {rid}: SGLang's scheduler left no hidden states in {path.parent}; was the engine "
            "started with SGLangEngine(..., hidden_states_in_shared_memory=True)?"
        )
    try:
        block = torch.load(path, mmap=True, weights_only=True)
        if block.shape[0] != length:
            raise ValueError(
                f"request {rid}: SGLang returned hidden states for {block.shape[0]} of {length} tokens; "
                "prefix caching and chunked prefill must be off"
            )
        return block[torch.tensor(positions, dtype=torch.long)]
    finally:
        path.unlink()


def remove_prefill_rows(rids: list[str]) -> None:
    """Remove whatever the scheduler left for these requests (their rows, or a half-written copy)."""
    for rid in rids:
        path = hidden_state_file(rid)
        path.unlink(missing_ok=True)
        path.with_suffix(".partial").unlink(missing_ok=True)


def take_prefill_rows(
    req: Any, hidden_states: torch.Tensor, offset: int, length: int, *, store: bool, writes: bool
) -> int:
    """What the replaced method does for our requests: `req` is SGLang's `Req` (`rid`, `hidden_states`),
    `hidden_states` the batch's [tokens, hidden] tensor, whose rows `offset` .. `offset + length` are this
    request's prefill. Returns the next request's offset, as SGLang's method does."""
    end = offset + length
    if store:
        if writes:
            write_prefill_rows(hidden_states[offset:end], req.rid)
        req.hidden_states.append([])
    return end


def shared_memory_method(
    original: Callable[..., int], tensor_parallel_rank: Callable[[], int]
) -> Callable[..., int]:
    """The replacement of `_append_prefill_hidden_states`: `take_prefill_rows` for our requests with full
    capture, `original` for anything else."""

    def append_prefill_hidden_states(self: Any, **keywords: Any) -> int:
        # The keywords are `PATCHED_KEYWORDS`, checked against SGLang's method before it is replaced.
        req = keywords["req"]
        ours = str(req.rid).startswith(RID_PREFIX) and req.return_hidden_states is True
        if not (ours and keywords["capture_hidden_mode"].is_full()):
            return original(self, **keywords)
        return take_prefill_rows(
            req,
            keywords["logits_output"].hidden_states,
            keywords["hidden_state_offset"],
            keywords["extend_input_len"],
            store=keywords.get("store", True),
            writes=tensor_parallel_rank() == 0,
        )

    return append_prefill_hidden_states


def keyword_only_parameters(function: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind == inspect.Parameter.KEYWORD_ONLY
    )
