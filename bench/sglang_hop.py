"""The SGLang teacher's hidden-state hop, scheduler process to engine process, without SGLang: SGLang's
scheduler method (`.tolist()`) and the one that replaces it, called as SGLang's prefill loop calls them, a
msgpack round trip of the output (msgpack-python standing in for SGLang's msgspec encoder: the same format),
and the decoder the SGLang teacher runs. Used by `bench/transfer.py` and `bench/gpu_check.py`."""

import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import torch

from kubedistill.runtime.engines.sglang.args import gather_hidden_states
from kubedistill.runtime.engines.sglang.hidden_states import request_ids
from kubedistill.runtime.teacher.backend import TeacherBatch


@dataclass
class SGLangReq:
    """SGLang's `Req` (`srt/managers/schedule_batch.py`), with what `_append_prefill_hidden_states` reads."""

    rid: str
    return_hidden_states: bool | str = True
    hidden_states: list = field(default_factory=list)


@dataclass
class SGLangLogitsOutput:
    """SGLang's `LogitsProcessorOutput`: the batch's [tokens, hidden] states."""

    hidden_states: torch.Tensor


class FullCapture:
    """SGLang's `CaptureHiddenMode.FULL`."""

    def is_full(self) -> bool:
        return True


def prefill(method: Any, reqs: list[SGLangReq], lengths: list[int], hidden: torch.Tensor) -> None:
    """The loop of SGLang's `process_batch_result_prefill` over a batch's requests, with `method` in the
    place of its `_append_prefill_hidden_states`."""
    offset = 0
    for req, length in zip(reqs, lengths, strict=True):
        offset = method(
            None,
            req=req,
            logits_output=SGLangLogitsOutput(hidden),
            hidden_state_offset=offset,
            capture_hidden_mode=FullCapture(),
            extend_input_len=length,
            store=True,
        )


def engine_output(req: SGLangReq) -> dict[str, Any]:
    """What `Engine.generate` returns for a one-token request: its rid as meta_info["id"], its chunks."""
    return {"output_ids": [7], "meta_info": {"id": req.rid, "hidden_states": req.hidden_states}}


def sglang_tolist(self: Any, *, req: Any, logits_output: Any, hidden_state_offset: int, **rest: Any) -> int:
    """SGLang 0.5.23's full-capture branch (`batch_result_processor.py:651-659`)."""
    end = hidden_state_offset + rest["extend_input_len"]
    req.hidden_states.append(logits_output.hidden_states[hidden_state_offset:end].cpu().clone().tolist())
    return end


def decode_once(method: Any, hidden: torch.Tensor, batch: TeacherBatch) -> tuple[float, float, float]:
    """Scheduler, IPC and decode seconds of one prefill's hidden states (its rows checked on arrival)."""
    req = SGLangReq(request_ids(1)[0])
    started = time.perf_counter()
    prefill(method, [req], [hidden.shape[0]], hidden)
    scheduled = time.perf_counter()
    received = msgpack.unpackb(msgpack.packb(engine_output(req)))
    sent = time.perf_counter()
    gathered = gather_hidden_states([received], batch, hidden.shape[1], hidden.dtype)
    decoded = time.perf_counter()
    if not torch.equal(gathered, hidden.to(gathered.device)):
        raise RuntimeError("the decoded hidden states differ from the scheduler's")
    return scheduled - started, sent - scheduled, decoded - sent
