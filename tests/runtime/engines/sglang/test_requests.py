"""Requests to SGLang and the reading of its answers, on outputs shaped as SGLang 0.5.23 returns them
(`meta_info["hidden_states"]` = [prefill block as nested float lists], see `test_sglang_facts`)."""

from typing import Any

import pytest
import torch

from kubedistill.runtime.engines.sglang.args import (
    gather_hidden_states,
    hidden_state_sampling_params,
    output_ids,
    rollout_input_ids,
    rollout_sampling_params,
)
from kubedistill.runtime.rollout.backend import SamplingConfig
from kubedistill.runtime.teacher.backend import TeacherBatch

HIDDEN = 8
PAIR = TeacherBatch(sequences=[[1, 2]], positions=[[0]])
ABORT = {"type": "abort", "message": "too long"}


def _output(meta_info: dict[str, Any], ids: list[int] | None = None) -> dict[str, Any]:
    return {"output_ids": ids or [], "meta_info": meta_info}


def _answer(hidden: torch.Tensor) -> dict[str, Any]:
    """One `Engine.generate` output of a one-token request: the prefill block, then nothing."""
    return {"output_ids": [7], "meta_info": {"hidden_states": [hidden.tolist()], "completion_tokens": 1}}


def _hidden(length: int, seed: int) -> torch.Tensor:
    return torch.randn(length, HIDDEN, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


def test_a_teacher_request_asks_for_at_least_one_new_token() -> None:
    assert hidden_state_sampling_params()["max_new_tokens"] >= 1


def test_hidden_states_at_the_positions_come_back_exactly_sequences_in_order() -> None:
    first, second = _hidden(5, 0), _hidden(3, 1)
    batch = TeacherBatch(sequences=[[1] * 5, [2] * 3], positions=[[1, 2, 4], [0, 2]])
    gathered = gather_hidden_states([_answer(first), _answer(second)], batch, HIDDEN, torch.bfloat16)
    assert gathered.dtype == torch.bfloat16
    assert torch.equal(gathered, torch.cat([first[[1, 2, 4]], second[[0, 2]]]))


def test_a_sequence_without_positions_contributes_no_rows() -> None:
    batch = TeacherBatch(sequences=[[1] * 4, [2] * 2], positions=[[], [1]])
    gathered = gather_hidden_states(
        [_answer(_hidden(4, 0)), _answer(_hidden(2, 1))], batch, HIDDEN, torch.float32
    )
    assert torch.equal(gathered, _hidden(2, 1)[[1]].float())


def test_no_positions_at_all_give_an_empty_tensor_of_the_hidden_width() -> None:
    batch = TeacherBatch(sequences=[[1, 2]], positions=[[]])
    gathered = gather_hidden_states([_answer(_hidden(2, 0))], batch, HIDDEN, torch.bfloat16)
    assert gathered.shape == (0, HIDDEN) and gathered.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("outputs", "batch", "message"),
    [
        ([_output({"hidden_states": []})], PAIR, "max_new_tokens"),
        ([_output({})], PAIR, "enable_return_hidden_states"),
        ([_output({"finish_reason": ABORT})], PAIR, "aborted the request: too long"),
        ([_answer(_hidden(2, 0))], TeacherBatch([[1, 2, 3]], [[0]]), "chunked prefill"),
        ([_answer(_hidden(2, 0))], TeacherBatch([[1, 2], [3]], [[0], [0]]), "1 outputs for 2 sequences"),
        ([_answer(_hidden(2, 0))], TeacherBatch([[1, 2]], [[2]]), "positions outside"),
        ([_answer(_hidden(2, 0))], TeacherBatch([[1, 2]], [[-1]]), "positions outside"),
        ([_answer(torch.zeros(2, HIDDEN + 1))], PAIR, "rows of 8"),
    ],
)
def test_an_answer_that_does_not_fit_the_batch_is_refused_saying_why(
    outputs: list[dict[str, Any]], batch: TeacherBatch, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        gather_hidden_states(outputs, batch, HIDDEN, torch.bfloat16)


def test_each_prompt_is_sent_once_per_sample_prompt_major() -> None:
    assert rollout_input_ids([[1, 2], [3]], 3) == [[1, 2], [1, 2], [1, 2], [3], [3], [3]]
    assert rollout_input_ids([[1, 2], [3]], 1) == [[1, 2], [3]]


def test_sampling_follows_the_config() -> None:
    config = SamplingConfig(max_new_tokens=64, temperature=0.7, top_p=0.9, samples_per_prompt=4, seed=3)
    assert rollout_sampling_params(config) == {"max_new_tokens": 64, "temperature": 0.7, "top_p": 0.9}


def test_responses_are_the_output_token_ids_in_request_order() -> None:
    outputs = [{"output_ids": [5, 6, 2], "meta_info": {}}, {"output_ids": [9], "meta_info": {}}]
    assert output_ids(outputs) == [[5, 6, 2], [9]]


def test_an_aborted_generation_is_refused_not_taken_for_an_empty_response() -> None:
    with pytest.raises(ValueError, match="sequence 1: SGLang aborted the request: too long"):
        output_ids([_output({}, [5]), _output({"finish_reason": ABORT})])
