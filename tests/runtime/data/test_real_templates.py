"""Reasoning and tool calls through the chat templates models ship (TRL's chat_templates folder holds them
byte for byte): what each trains on, and that nothing a record carries is left out without a word."""

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import trl

from kubedistill.api.spec import Mode
from kubedistill.runtime.data import ChatTemplateError, load_samples
from kubedistill.runtime.data.load import LoadedData

from .builders import decoded_targets, spec, write_jsonl

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
QUESTION = {"role": "user", "content": "What is 2+2?"}
REASONING_LOG = "kubedistill.runtime.data.reasoning"


@pytest.fixture(scope="module")
def templated(tokenizer):
    """The tokenizer with a model's own chat template, named as a model directory would be."""

    def with_template(name: str) -> Any:
        copied = copy.deepcopy(tokenizer)
        copied.chat_template = (TEMPLATES / f"{name}.jinja").read_text()
        copied.name_or_path = f"models/{name}"
        return copied

    return with_template


def answer(content: str | None, **more: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **more}


def load(
    tmp_path: Path, tokenizer: Any, *chats: list[dict[str, Any]], mode: Mode = Mode.OFF_POLICY
) -> LoadedData:
    source = write_jsonl(tmp_path / "train.jsonl", [{"messages": messages} for messages in chats])
    return load_samples(source, spec(source), tokenizer, mode=mode)


def targets(tokenizer: Any, loaded: LoadedData) -> str:
    (sample,) = loaded.samples
    return decoded_targets(tokenizer, list(sample.input_ids), list(sample.target_mask))


def reasoning_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == REASONING_LOG]


def test_qwen3_trains_the_reasoning_content_of_a_one_turn_chat_and_warns_of_nothing(
    tmp_path: Path, templated, caplog: pytest.LogCaptureFixture
) -> None:
    qwen3 = templated("qwen3")
    loaded = load(tmp_path, qwen3, [QUESTION, answer("The answer is 4.", reasoning_content="two and two")])
    assert targets(qwen3, loaded) == "<think>\ntwo and two\n</think>\n\nThe answer is 4.<|im_end|>"
    assert reasoning_warnings(caplog) == []


def test_qwen3_trains_the_reasoning_of_every_tool_calling_step_after_the_question(
    tmp_path: Path, templated
) -> None:
    qwen3 = templated("qwen3")
    call = {"type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}
    steps = [
        QUESTION,
        answer(None, tool_calls=[call], reasoning_content="ask add"),
        {"role": "tool", "content": "4"},
        answer("4", reasoning_content="it said 4"),
    ]
    assert targets(qwen3, load(tmp_path, qwen3, steps)) == (
        '<think>\nask add\n</think>\n\n<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>'
        "<|im_end|><think>\nit said 4\n</think>\n\n4<|im_end|>"
    )


TWO_QUESTIONS = [
    QUESTION,
    answer("4", reasoning_content="two"),
    {"role": "user", "content": "And 3+3?"},
    answer("6", reasoning_content="three"),
]


def test_qwen3_trains_each_answer_of_a_multi_turn_chat_with_its_reasoning_as_it_was_generated(
    tmp_path: Path, templated, caplog: pytest.LogCaptureFixture
) -> None:
    """Qwen3's template renders the reasoning of the turns after the last question only: the first answer
    is trained in the chat cut after it, the second in the whole chat, where the first has lost it."""
    qwen3 = templated("qwen3")
    first, second = load(tmp_path, qwen3, TWO_QUESTIONS).samples
    assert decoded_targets(qwen3, list(first.input_ids), list(first.target_mask)) == (
        "<think>\ntwo\n</think>\n\n4<|im_end|>"
    )
    assert qwen3.decode(first.input_ids).endswith(
        "<|im_start|>assistant\n<think>\ntwo\n</think>\n\n4<|im_end|>\n"
    )
    assert decoded_targets(qwen3, list(second.input_ids), list(second.target_mask)) == (
        "<think>\nthree\n</think>\n\n6<|im_end|>"
    )
    assert "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?" in qwen3.decode(second.input_ids)
    assert reasoning_warnings(caplog) == []


def test_a_chat_trained_in_parts_is_counted_as_one_record_when_its_parts_are_shortened(
    tmp_path: Path, templated, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning counts records, as a user counts the lines of the file, not the parts they became."""
    qwen3 = templated("qwen3")
    source = write_jsonl(tmp_path / "train.jsonl", [{"messages": TWO_QUESTIONS}, {"messages": TWO_QUESTIONS}])
    with caplog.at_level(logging.WARNING, logger="kubedistill.runtime.data.load"):
        loaded = load_samples(
            source, spec(source, maxLength=20, promptMaxLength=12), qwen3, mode=Mode.OFF_POLICY
        )
    assert len(loaded.truncated) == len(loaded.samples) == 4, "each chat in two parts, every part shortened"
    (warning,) = [r.getMessage() for r in caplog.records if "were shortened" in r.getMessage()]
    assert warning.startswith("spec.data.train: 2 of 2 records were shortened"), warning


def test_train_turns_last_trains_only_the_last_answer_in_one_sample(tmp_path: Path, templated) -> None:
    qwen3 = templated("qwen3")
    source = write_jsonl(tmp_path / "train.jsonl", [{"messages": TWO_QUESTIONS}])
    loaded = load_samples(source, spec(source, trainTurns="last"), qwen3, mode=Mode.OFF_POLICY)
    assert targets(qwen3, loaded) == "<think>\nthree\n</think>\n\n6<|im_end|>"


def test_gpt_oss_trains_a_records_thinking_as_its_analysis_channel(tmp_path: Path, templated) -> None:
    gpt_oss = templated("gptoss")
    loaded = load(tmp_path, gpt_oss, [QUESTION, answer("The answer is 4.", thinking="two and two")])
    assert targets(gpt_oss, loaded) == (
        "<|channel|>analysis<|message|>two and two<|end|>"
        "<|start|>assistant<|channel|>final<|message|>The answer is 4.<|return|>"
    )


@pytest.mark.parametrize("key", ["reasoning_content", "thinking", "reasoning"])
def test_a_template_that_drops_the_reasoning_warns_once_per_source_naming_the_field_and_template(
    tmp_path: Path, templated, caplog: pytest.LogCaptureFixture, key: str
) -> None:
    llama = templated("llama3_1")
    thinking = [QUESTION, answer("The answer is 4.", **{key: "two and two"})]
    plain = [QUESTION, answer("The answer is 4.")]
    source = tmp_path / "train.jsonl"
    with caplog.at_level(logging.WARNING, logger=REASONING_LOG):
        loaded = load(tmp_path, llama, plain, thinking, thinking)
    assert all("two and two" not in llama.decode(sample.input_ids) for sample in loaded.samples)
    assert reasoning_warnings(caplog) == [
        f"spec.data.train: 2 of 3 records carry an assistant's reasoning ({key}) that the chat template of "
        f"models/llama3_1 does not render, so the run trains on their answers without it; the first: "
        f"{source}:2 (message 1). Use a template that renders it, or drop the field to train on answers alone"
    ]


def test_deepseek_v3_gets_tool_call_arguments_as_the_json_text_it_adds_to_its_markup(
    tmp_path: Path, templated
) -> None:
    """transformers documents arguments as an object; DeepSeek-V3's template concatenates them as text."""
    deepseek = templated("deepseekv3")
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}
    prompt = [QUESTION, answer(None, tool_calls=[call]), {"role": "tool", "content": "4"}]
    (sample,) = load(tmp_path, deepseek, prompt, mode=Mode.ON_POLICY).samples
    assert '<｜tool▁sep｜>add\n```json\n{"a": 2, "b": 2}\n```' in deepseek.decode(sample.input_ids)


@pytest.mark.parametrize("template", ["deepseek_r1_distill", "deepseek_r1_distill_training"])
def test_deepseek_r1_trains_the_reasoning_content_its_template_leaves_out_and_warns_of_nothing(
    tmp_path: Path, templated, caplog: pytest.LogCaptureFixture, template: str
) -> None:
    """Neither template renders reasoning_content; the model writes it after the prefilled `<think>\\n`."""
    r1 = templated(template)
    loaded = load(tmp_path, r1, [QUESTION, answer("The answer is 4.", reasoning_content="two and two")])
    assert targets(r1, loaded) == "two and two\n</think>\n\nThe answer is 4.<｜end▁of▁sentence｜>"
    assert reasoning_warnings(caplog) == []


@pytest.mark.parametrize("template", ["deepseek_r1_distill", "deepseek_r1_distill_training"])
def test_deepseek_r1s_tool_calls_are_refused_naming_its_null_content_test(
    tmp_path: Path, templated, template: str
) -> None:
    call = {"type": "function", "function": {"name": "add", "arguments": json.dumps({"a": 2})}}
    chat = [QUESTION, answer(None, tool_calls=[call]), {"role": "tool", "content": "4"}, answer("4")]
    with pytest.raises(
        ChatTemplateError,
        match=r":1: the chat template renders tool calls only in a message whose content is null",
    ):
        load(tmp_path, templated(template), chat)
