"""Chats in the OpenAI format: content parts, tool calls and tool results, through the chat template."""

import copy

import pytest

from kubedistill.runtime.data.errors import ChatTemplateError

from .builders import TOOL_TEMPLATE, chat, decoded_targets
from .test_tokenize import QUESTION, build

CALL = {"type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}, "id": "call_1"}
TOOL_CHAT = {
    "messages": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        {"role": "assistant", "content": "The answer is 4."},
    ]
}


@pytest.fixture(scope="module")
def tool_tokenizer(tokenizer):
    with_tools = copy.deepcopy(tokenizer)
    with_tools.chat_template = TOOL_TEMPLATE
    return with_tools


def test_text_content_parts_read_as_the_text_they_hold(tokenizer) -> None:
    parts = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "The answer is 4."}]},
        ]
    }
    assert build(tokenizer, parts) == build(tokenizer, QUESTION)


def test_the_assistants_tool_calls_are_trained_on_and_the_tool_result_is_not(tool_tokenizer) -> None:
    sample = build(tool_tokenizer, TOOL_CHAT)
    targets = decoded_targets(tool_tokenizer, sample.input_ids, sample.target_mask)
    assert targets == (
        '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 2}}\n</tool_call><|im_end|>'
        "The answer is 4.<|im_end|>"
    )
    text = tool_tokenizer.decode(sample.input_ids)
    assert "<tool_response>\n4\n</tool_response>" in text


def test_tool_call_arguments_as_a_json_string_or_an_object_read_the_same(tool_tokenizer) -> None:
    as_object = copy.deepcopy(TOOL_CHAT)
    as_object["messages"][1]["tool_calls"][0]["function"]["arguments"] = {"a": 2, "b": 2}
    assert build(tool_tokenizer, as_object) == build(tool_tokenizer, TOOL_CHAT)


def test_an_on_policy_prompt_keeps_its_tool_calls(tool_tokenizer) -> None:
    from kubedistill.api.spec import Mode

    prompt = {"messages": TOOL_CHAT["messages"][:3]}
    sample = build(tool_tokenizer, prompt, mode=Mode.ON_POLICY)
    assert '{"name": "add"' in tool_tokenizer.decode(sample.input_ids)


def test_a_template_that_drops_tool_calls_is_refused_rather_than_losing_them(tokenizer) -> None:
    with pytest.raises(
        ChatTemplateError, match=r"^mem:7: the chat template does not render the tool_calls of message 1"
    ):
        build(tokenizer, TOOL_CHAT)


def test_a_record_without_tool_calls_is_read_as_before_by_a_tool_template(tool_tokenizer, tokenizer) -> None:
    plain = chat(("user", "What is 2+2?"), ("assistant", "The answer is 4."))
    assert build(tool_tokenizer, plain).input_ids.tolist() == build(tokenizer, plain).input_ids.tolist()


def test_tool_calls_with_a_teacher_of_another_tokenizer_are_a_bad_record_not_a_wrong_alignment(
    tool_tokenizer,
) -> None:
    from kubedistill.api.spec import DataSpec, Mode
    from kubedistill.runtime.data.errors import BadRecordError
    from kubedistill.runtime.data.records import Record
    from kubedistill.runtime.data.tokenize import SampleBuilder

    from .test_tokenize import CHATS, ROOMY

    data = DataSpec(train=CHATS, **ROOMY)
    builder = SampleBuilder(
        CHATS, data, tool_tokenizer, Mode.OFF_POLICY, tool_tokenizer, cross_tokenizer=True
    )
    with pytest.raises(
        BadRecordError, match=r"^mem:1: assistant message 1 calls tools, and tool calls cannot be"
    ):
        builder(Record("mem:1", TOOL_CHAT))


# The part of Qwen3's chat template (its tokenizer_config.json) that renders an assistant's thinking.
REASONING_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.reasoning_content %}"
    "{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{- message.content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_an_assistants_reasoning_content_reaches_a_template_that_renders_it(tokenizer) -> None:
    thinking = copy.deepcopy(tokenizer)
    thinking.chat_template = REASONING_TEMPLATE
    record = chat(("user", "What is 2+2?"), ("assistant", "The answer is 4."))
    record["messages"][1]["reasoning_content"] = "two and two"
    sample = build(thinking, record)
    targets = decoded_targets(thinking, sample.input_ids, sample.target_mask)
    assert targets == "<think>\ntwo and two\n</think>\n\nThe answer is 4.<|im_end|>"
