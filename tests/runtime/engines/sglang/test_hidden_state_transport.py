"""Teacher hidden states through shared memory instead of SGLang's nested float lists.

The replacement of SGLang's `_append_prefill_hidden_states` runs here on CPU tensors, called the way
`process_batch_result_prefill` calls it (`bench.sglang_hop.prefill`, which `bench/transfer.py` times too), and
its output is read back with the decoder the SGLang teacher uses. The objects it is handed stand for
SGLang's own (`Req`, `LogitsProcessorOutput`, `CaptureHiddenMode`), with only the attributes the method reads;
the wheel tests below pin those to the release.
"""

import ast
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.sglang_hop import SGLangReq, engine_output, prefill, sglang_tolist
from kubedistill.runtime.engines.sglang.args import gather_hidden_states
from kubedistill.runtime.engines.sglang.hidden_states import (
    PATCHED_KEYWORDS,
    hidden_state_file,
    request_ids,
    shared_memory_method,
    shared_memory_shortfall,
    shared_memory_size,
)
from kubedistill.runtime.teacher.backend import TeacherBatch
from tests.runtime.engines.sglang.wheel_source import SGLangSource

RESULTS = "sglang.srt.managers.scheduler_components.batch_result_processor"
HIDDEN = 8


def _prefill(reqs: list[SGLangReq], lengths: list[int], hidden: torch.Tensor, rank: int = 0) -> None:
    prefill(shared_memory_method(sglang_tolist, lambda: rank), reqs, lengths, hidden)


def _outputs(reqs: list[SGLangReq]) -> list[dict[str, Any]]:
    return [engine_output(req) for req in reqs]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_our_rows_cross_in_shared_memory_in_their_dtype_and_come_back_exactly(dtype: torch.dtype) -> None:
    lengths = [5, 3]
    hidden = torch.randn(sum(lengths), HIDDEN, generator=torch.Generator().manual_seed(0)).to(dtype)
    reqs = [SGLangReq(rid) for rid in request_ids(2)]
    _prefill(reqs, lengths, hidden)
    assert [r.hidden_states for r in reqs] == [[[]], [[]]], "no float crosses SGLang's output path"
    assert torch.load(hidden_state_file(reqs[0].rid), weights_only=True).dtype == dtype
    batch = TeacherBatch(sequences=[[1] * 5, [2] * 3], positions=[[1, 2, 4], [0, 2]])
    gathered = gather_hidden_states(_outputs(reqs), batch, HIDDEN, dtype)
    assert torch.equal(gathered, torch.cat([hidden[[1, 2, 4]], hidden[5:][[0, 2]]]))
    assert not any(hidden_state_file(r.rid).exists() for r in reqs), "read once, then removed"


def test_the_list_path_and_the_shared_memory_path_decode_to_the_same_tensor() -> None:
    hidden = torch.randn(6, HIDDEN).to(torch.bfloat16)
    batch = TeacherBatch(sequences=[[1] * 6], positions=[[0, 3, 5]])
    ours, theirs = SGLangReq(request_ids(1)[0]), SGLangReq("someone-elses-request")
    _prefill([ours], [6], hidden)
    _prefill([theirs], [6], hidden)
    assert len(theirs.hidden_states[0]) == 6, "requests that are not ours keep SGLang's lists"
    assert torch.equal(
        gather_hidden_states(_outputs([ours]), batch, HIDDEN, torch.bfloat16),
        gather_hidden_states(_outputs([theirs]), batch, HIDDEN, torch.bfloat16),
    )


def test_other_tensor_parallel_ranks_write_nothing_but_keep_the_same_chunks() -> None:
    req = SGLangReq(request_ids(1)[0])
    _prefill([req], [4], torch.zeros(4, HIDDEN), rank=1)
    assert req.hidden_states == [[]]
    assert not hidden_state_file(req.rid).exists()


def test_last_token_capture_is_left_to_sglang() -> None:
    req = SGLangReq(request_ids(1)[0], return_hidden_states="last")
    _prefill([req], [4], torch.zeros(4, HIDDEN))
    assert len(req.hidden_states[0]) == 4 and not hidden_state_file(req.rid).exists()


def test_rows_that_never_arrived_are_reported_naming_the_request() -> None:
    rid = request_ids(1)[0]
    outputs = [{"output_ids": [7], "meta_info": {"id": rid, "hidden_states": [[]]}}]
    with pytest.raises(ValueError, match=f"request {rid}: SGLang's scheduler left no hidden states"):
        gather_hidden_states(outputs, TeacherBatch([[1, 2]], [[0]]), HIDDEN, torch.bfloat16)


def test_a_prefill_of_the_wrong_length_is_refused() -> None:
    req = SGLangReq(request_ids(1)[0])
    _prefill([req], [3], torch.zeros(3, HIDDEN))
    with pytest.raises(ValueError, match="3 of 4 tokens"):
        gather_hidden_states(_outputs([req]), TeacherBatch([[1, 2, 3, 4]], [[0]]), HIDDEN, torch.bfloat16)


# -- the shape of what is replaced, in the pinned wheel ------------------------------------------------------


def _method(source: SGLangSource, module: str, cls: str, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    return source.methods(module, cls)[name]


def test_the_replaced_method_still_has_the_shape_the_replacement_assumes(sglang_source: SGLangSource) -> None:
    method = _method(sglang_source, RESULTS, "SchedulerBatchResultProcessor", "_append_prefill_hidden_states")
    assert tuple(a.arg for a in method.args.kwonlyargs) == PATCHED_KEYWORDS
    assert [a.arg for a in method.args.args] == ["self"]
    assert method.returns is not None and ast.unparse(method.returns) == "int"
    body = ast.unparse(method)
    for line in (
        "if capture_hidden_mode.is_full():",
        "hidden_state_offset += extend_input_len",
        "if not store or not req.return_hidden_states:",
        "req_hidden_states = logits_output.hidden_states[start:hidden_state_offset]",
        "if req.return_hidden_states is True:",
        "req.hidden_states.append(req_hidden_states.cpu().clone().tolist())",
        "return hidden_state_offset",
    ):
        assert line in body, line


def test_the_prefill_loop_calls_it_with_keywords_and_takes_the_offset_back(
    sglang_source: SGLangSource,
) -> None:
    loop = _method(sglang_source, RESULTS, "SchedulerBatchResultProcessor", "process_batch_result_prefill")
    calls = [
        node
        for node in ast.walk(loop)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "self._append_prefill_hidden_states"
    ]
    assert len(calls) == 1 and not calls[0].args
    assert {k.arg for k in calls[0].keywords} == set(PATCHED_KEYWORDS)
    assert "hidden_state_offset = self._append_prefill_hidden_states(" in ast.unparse(loop)


def test_every_scheduler_launch_runs_the_engines_scheduler_function(sglang_source: SGLangSource) -> None:
    engine = sglang_source.text("sglang.srt.entrypoints.engine")
    assert "run_scheduler_process_func: Callable = staticmethod(run_scheduler_process)" in engine
    assert "run_scheduler_process_func=self.run_scheduler_process_func" in engine
    assert "target = run_scheduler_process_func" in engine
    controller = sglang_source.text("sglang.srt.managers.data_parallel_controller")
    assert "target=self.run_scheduler_process_func" in controller
    assert "run_scheduler_process_func(*scheduler_args, pipe, *display_ranks)" in controller


def test_an_output_names_its_request_and_may_carry_an_empty_chunk(sglang_source: SGLangSource) -> None:
    assert '"id": rid,' in sglang_source.text("sglang.srt.managers.tokenizer_manager")
    io_struct = sglang_source.text("sglang.srt.managers.io_struct")
    assert "HiddenStateChunk = List[Optional[Union[float, List[float]]]]" in io_struct
    generate = sglang_source.methods("sglang.srt.entrypoints.engine", "Engine")["generate"]
    assert "rid" in {a.arg for a in generate.args.args + generate.args.kwonlyargs}


GIB = 2**30


def test_a_shared_memory_holding_twice_the_largest_batch_raises_no_warning() -> None:
    # 8 sequences of 4096 tokens of a 5120-wide bf16 teacher: 320 MiB a batch.
    assert shared_memory_shortfall(640 * 2**20, 8 * 4096, 5120, 2) is None


def test_a_shared_memory_too_small_for_two_batches_is_named_with_the_size_it_needs() -> None:
    warning = shared_memory_shortfall(GIB // 2, 8 * 4096, 5120, 2)
    assert warning is not None
    assert warning.startswith("spec.cluster.shmSize: /dev/shm holds 0.50 GiB")
    assert "32768 tokens x 5120 x 2 bytes = 0.31 GiB" in warning
    assert "at least 0.62 GiB" in warning


def test_the_size_of_a_real_tmpfs_is_read_and_a_missing_one_is_none(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if shm.is_dir():
        stats = os.statvfs(shm)
        assert shared_memory_size() == stats.f_frsize * stats.f_blocks > 0
    assert shared_memory_size(tmp_path / "absent") is None
