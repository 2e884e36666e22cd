"""A sampled response completes the student's prompt and, after its own privileged prompt, the teacher's:
the loss then pairs the positions that predict the same response token on both sides."""

import pytest

from kubedistill.api.spec import DataSource, DataSpec, Mode
from kubedistill.runtime.data.records import Record
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.data.tokenize import SampleBuilder
from kubedistill.runtime.demo.tiny import build_tokenizer
from kubedistill.runtime.trainer.planning import teacher_batch
from kubedistill.runtime.trainer.sources import with_response
from tests.runtime.data.builders import CORPUS

HINTED = DataSource(path="prompts.jsonl", teacher_input_key="hint")
RECORD = {
    "messages": [{"role": "user", "content": "What is 2+2?"}],
    "hint": "You are a careful tutor. What is 2+2? The answer is 4.",
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS, vocab_size=512)


def _prompt(tokenizer) -> Sample:
    data = DataSpec(train=HINTED, max_length=64, prompt_max_length=48)
    return SampleBuilder(HINTED, data, tokenizer, Mode.ON_POLICY, tokenizer)(
        Record("prompts.jsonl:3", RECORD)
    )


def _response(tokenizer) -> list[int]:
    return tokenizer("The answer is 4.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_the_teacher_scores_the_sampled_response_after_its_privileged_prompt(tokenizer) -> None:
    prompt, response = _prompt(tokenizer), _response(tokenizer)
    sample = with_response(prompt, response, max_length=64)
    assert list(sample.input_ids) == [*prompt.input_ids, *response]
    assert sample.teacher_input_ids is not None and prompt.teacher_input_ids is not None
    assert list(sample.teacher_input_ids) == [*prompt.teacher_input_ids, *response]
    assert tokenizer.decode(prompt.teacher_input_ids).startswith("<|im_start|>user\nYou are a careful tutor.")
    assert sample.source == "prompts.jsonl:3 (rollout)"


def test_student_and_teacher_positions_predict_the_same_response_tokens_in_order(tokenizer) -> None:
    prompt, response = _prompt(tokenizer), _response(tokenizer)
    sample = with_response(prompt, response, max_length=64)
    student, teacher = sample.loss_positions(), sample.teacher_loss_positions()
    assert student[0] == len(prompt.input_ids) - 1, "the last prompt token predicts the first response one"
    assert teacher[0] == len(prompt.teacher_input_ids) - 1
    assert sample.labels() == sample.teacher_labels() == response
    assert sample.aligned_targets() == [(i, i) for i in range(len(response))]
    request = teacher_batch([sample])
    assert request.sequences == [list(sample.teacher_input_ids)] and request.positions == [teacher]


def test_a_response_cut_to_fit_the_students_length_is_cut_the_same_for_the_teacher(tokenizer) -> None:
    prompt, response = _prompt(tokenizer), _response(tokenizer)
    room = len(prompt.input_ids) + 2
    sample = with_response(prompt, response, max_length=room)
    assert sample.labels() == sample.teacher_labels() == response[:2]
    assert len(sample.teacher_input_ids) == len(prompt.teacher_input_ids) + 2
