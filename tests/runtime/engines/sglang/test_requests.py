"""Requests to SGLang and the reading of its answers, on outputs shaped as SGLang 0.5.23 returns them
(`meta_info["hidden_states"]` = [prefill block as nested float lists], see `test_sglang_facts`)."""

import warnings
from typing import Any

import numpy as np
import pytest
import torch

from kubedistill.runtime.data.images import ImageInputs
from kubedistill.runtime.engines.sglang.args import (
    PROCESSOR_OUTPUT,
    gather_hidden_states,
    hidden_state_sampling_params,
    image_data_for,
    output_ids,
    rollout_image_data,
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


IMAGE_TOKEN = 151655


def _images(*grids: tuple[int, int, int], seed: int = 0) -> ImageInputs:
    patches = sum(t * h * w for t, h, w in grids)
    pixels = np.random.default_rng(seed).standard_normal((patches, 1176), dtype=np.float32)
    pixels.flags.writeable = False  # as arrays arrive through Ray's object store
    return ImageInputs(pixels, grids, IMAGE_TOKEN)


def test_a_batch_without_images_sends_no_image_data() -> None:
    assert image_data_for([]) is None
    assert image_data_for([None, None]) is None
    assert rollout_image_data(None, 4) is None
    assert rollout_image_data([None], 4) is None


def test_each_sequence_sends_its_images_as_one_processor_output_item() -> None:
    two = _images((1, 4, 6), (1, 2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about the read-only pixels
        data = image_data_for([None, two])
    assert data is not None and len(data) == 2
    without, with_images = data
    assert without == []
    (item,) = with_images
    assert set(item) == {"format", "pixel_values", "image_grid_thw"}
    assert item["format"] == PROCESSOR_OUTPUT == "processor_output"
    pixels, grid = item["pixel_values"], item["image_grid_thw"]
    assert isinstance(pixels, torch.Tensor) and pixels.dtype == torch.float32 and pixels.shape == (28, 1176)
    assert np.array_equal(pixels.numpy(), two.pixel_values)
    assert not np.shares_memory(pixels.numpy(), two.pixel_values)
    assert isinstance(grid, torch.Tensor) and grid.dtype == torch.int64
    assert grid.tolist() == [[1, 4, 6], [1, 2, 2]]


def test_one_image_still_has_a_two_dimensional_grid() -> None:
    data = image_data_for([_images((2, 4, 4))])
    assert data is not None
    assert data[0][0]["image_grid_thw"].shape == (1, 3)


def test_pixels_that_do_not_fill_the_grids_are_refused() -> None:
    wrong = ImageInputs(np.zeros((10, 1176), dtype=np.float32), ((1, 4, 4),), IMAGE_TOKEN)
    with pytest.raises(ValueError, match="make 16 patches, pixel_values has 10"):
        image_data_for([wrong])


def test_rollout_images_follow_their_prompts_once_per_sample() -> None:
    first, second = _images((1, 2, 2), seed=1), _images((1, 4, 4), seed=2)
    prompts = [[1, 2], [3], [4]]
    data = rollout_image_data([first, None, second], 2)
    assert data is not None
    assert len(data) == len(rollout_input_ids(prompts, 2)) == 6
    assert [len(items) for items in data] == [1, 1, 0, 0, 1, 1]
    assert [items[0]["image_grid_thw"].tolist() for items in data if items] == [[[1, 2, 2]]] * 2 + [
        [[1, 4, 4]]
    ] * 2
    assert data[0][0] is not data[1][0]  # a dict of its own per request
    assert data[0][0]["pixel_values"] is data[1][0]["pixel_values"]  # the pixels copied once per prompt
