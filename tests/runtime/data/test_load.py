import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kubedistill.api.spec import DataSource, DataSpec, Mode
from kubedistill.runtime.data import BadRecord, BadRecordError, ChatTemplateError, DataFileError, load_samples

from .builders import FILES, chat, spec, write_jsonl

PAIRS = {"prompt_key": "prompt", "response_key": "response"}


@dataclass(frozen=True)
class BadFile:
    name: str
    line: int
    problem: str
    good: int
    """Good records in the file besides the bad one."""
    source: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    mode: Mode = Mode.OFF_POLICY

    def settings(self, on_bad_record: str) -> tuple[DataSource, DataSpec]:
        source = DataSource(path=str(FILES / self.name), **self.source)
        data = spec(source, on_bad_record=on_bad_record, **self.data)
        return source, data


BAD_FILES = [
    BadFile("not_utf8.jsonl", 2, "not UTF-8: byte 0xe9 at column 47", 2),
    BadFile("truncated_json.jsonl", 3, "invalid JSON: Unterminated string starting at column 43", 3),
    BadFile("not_an_object.jsonl", 2, "a record must be a JSON object, got a list", 2),
    BadFile("missing_messages.jsonl", 3, "missing key 'messages' (spec.data.train.inputKey)", 3),
    BadFile("messages_not_a_list.jsonl", 2, "'messages' must be a list of messages, got a string", 2),
    BadFile("message_not_an_object.jsonl", 2, "'messages': message 0 must be an object, got a string", 2),
    BadFile("empty_messages.jsonl", 2, "'messages' is an empty list", 2),
    BadFile(
        "content_not_a_string.jsonl",
        2,
        "'messages': message 1 content must be a string or a list of text parts, got a number",
        2,
    ),
    BadFile(
        "unknown_role.jsonl", 4, "'messages': message 1 has role 'narrator'; expected one of system, user", 4
    ),
    BadFile(
        "tool_result_without_call.jsonl",
        2,
        "'messages': message 1 is a tool result, but no assistant message with tool_calls comes before it",
        2,
    ),
    BadFile(
        "tool_arguments_not_json.jsonl",
        3,
        "'messages': message 1 tool call 0 function.arguments is not JSON: Expecting value",
        3,
    ),
    BadFile(
        "tool_calls_not_a_list.jsonl", 2, "'messages': message 1 tool_calls must be a list, got an object", 2
    ),
    BadFile("no_assistant.jsonl", 2, "'messages' has no assistant message to train on", 2),
    BadFile("empty_response.jsonl", 2, "'messages': assistant message 1 is empty", 2),
    BadFile("lone_surrogate.jsonl", 2, "'messages[0].content' holds a lone surrogate", 2),
    BadFile(
        "over_long.jsonl",
        2,
        "the prompt alone has 64 tokens after cutting to promptMaxLength 64, leaving no room",
        2,
        data={"max_length": 64, "prompt_max_length": 64},
    ),
    BadFile("response_not_a_string.jsonl", 2, "'response' must be a string, got a list", 2, source=PAIRS),
    BadFile("missing_response.jsonl", 3, "missing key 'response' (spec.data.train.responseKey)", 3, PAIRS),
    BadFile(
        "missing_context.jsonl",
        2,
        "missing key 'context' (spec.data.train.teacherInputKey)",
        2,
        source=PAIRS | {"teacher_input_key": "context"},
    ),
    BadFile(
        "prompts_missing_context.jsonl",
        2,
        "missing key 'context' (spec.data.train.teacherInputKey)",
        2,
        source={"prompt_key": "prompt", "teacher_input_key": "context"},
        mode=Mode.ON_POLICY,
    ),
    BadFile("array_missing_messages.json", 14, "missing key 'messages' (spec.data.train.inputKey)", 2),
    BadFile(
        "only_an_answer.jsonl",
        2,
        "'messages' holds no prompt before its assistant message",
        2,
        mode=Mode.ON_POLICY,
    ),
]


@pytest.mark.parametrize("bad", BAD_FILES, ids=lambda bad: f"{bad.name}:{bad.line}")
def test_a_bad_record_fails_the_load_naming_its_file_line_and_problem(tokenizer, bad: BadFile) -> None:
    source, data = bad.settings("fail")
    with pytest.raises(BadRecordError) as raised:
        load_samples(source, data, tokenizer, mode=bad.mode)
    assert str(raised.value).startswith(f"{FILES / bad.name}:{bad.line}: {bad.problem}")
    assert raised.value.record.source == f"{FILES / bad.name}:{bad.line}"


@pytest.mark.parametrize("bad", BAD_FILES, ids=lambda bad: f"{bad.name}:{bad.line}")
def test_skipping_returns_each_bad_record_and_keeps_every_good_one(tokenizer, bad: BadFile) -> None:
    source, data = bad.settings("skip")
    loaded = load_samples(source, data, tokenizer, mode=bad.mode)
    assert len(loaded.samples) == bad.good
    assert [record.source for record in loaded.bad_records] == [f"{FILES / bad.name}:{bad.line}"]
    assert loaded.bad_records[0].problem.startswith(bad.problem)


def test_a_json_array_cut_off_mid_record_fails_even_when_skipping(tokenizer) -> None:
    source = DataSource(path=str(FILES / "truncated_array.json"))
    with pytest.raises(
        BadRecordError, match=rf"^{FILES}/truncated_array.json:34: invalid JSON: .* unreadable"
    ):
        load_samples(source, spec(source, on_bad_record="skip"), tokenizer, mode=Mode.OFF_POLICY)


@pytest.mark.parametrize("on_bad_record", ["fail", "skip"])
@pytest.mark.parametrize("name", ["empty.jsonl", "blank_lines.jsonl"])
def test_a_file_without_records_is_always_an_error(tokenizer, name: str, on_bad_record: str) -> None:
    source = DataSource(path=str(FILES / name))
    with pytest.raises(
        DataFileError, match=rf"^{FILES / name}: the file holds no records \(spec.data.train.path\)"
    ):
        load_samples(source, spec(source, on_bad_record=on_bad_record), tokenizer, mode=Mode.OFF_POLICY)


def test_a_file_of_only_bad_records_is_an_error_even_when_skipping(tokenizer, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "train.jsonl", [chat(("user", "hi")), ["hi"]])
    with pytest.raises(
        DataFileError, match=rf"^{source.path}: all 2 records are bad .* the first: {source.path}:1: "
    ):
        load_samples(source, spec(source, on_bad_record="skip"), tokenizer, mode=Mode.OFF_POLICY)


def test_samples_come_in_file_order_named_by_their_line(tokenizer) -> None:
    source = DataSource(path=str(FILES / "unknown_role.jsonl"))
    loaded = load_samples(source, spec(source, on_bad_record="skip"), tokenizer, mode=Mode.OFF_POLICY)
    assert [sample.source for sample in loaded.samples] == [f"{source.path}:{line}" for line in (1, 2, 3, 5)]


def test_errors_about_the_eval_source_name_its_field(tokenizer, tmp_path: Path) -> None:
    source = DataSource(path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataFileError, match=r"^spec.data.eval.path: cannot read"):
        load_samples(source, spec(source), tokenizer, mode=Mode.OFF_POLICY, field="spec.data.eval")


def test_a_chat_the_template_rejects_is_a_bad_record(tokenizer, tmp_path: Path) -> None:
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = (
        "{%- for m in messages %}"
        "{%- if m.role == 'system' %}{{ raise_exception('system messages are not supported') }}{%- endif %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
    )
    source = write_jsonl(
        tmp_path / "train.jsonl",
        [
            chat(("user", "What is 2+2?"), ("assistant", "4")),
            chat(("system", "Be brief."), ("assistant", "4")),
        ],
    )
    loaded = load_samples(source, spec(source, on_bad_record="skip"), strict, mode=Mode.OFF_POLICY)
    assert loaded.bad_records == [
        BadRecord(f"{source.path}:2", "the chat template rejects the chat: system messages are not supported")
    ]


def test_a_template_that_hides_assistant_tokens_fails_even_when_skipping(tokenizer, tmp_path: Path) -> None:
    rewriting = copy.deepcopy(tokenizer)
    # Its generation prompt ends in markup its assistant messages lack, and not in an opened reasoning block
    # (which is trained as the model writes it): no render shows one as generated.
    rewriting.chat_template = (
        "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
        "{%- if add_generation_prompt %}<|im_start|>assistant\n<answer>\n{%- endif %}"
    )
    record = chat(("user", "What is 2+2?"), ("assistant", "4"), ("user", "And 3+3?"), ("assistant", "6"))
    source = write_jsonl(tmp_path / "train.jsonl", [record])
    with pytest.raises(
        ChatTemplateError, match=rf"^{source.path}:1: the chat template renders assistant message 1 without"
    ):
        load_samples(source, spec(source, on_bad_record="skip"), rewriting, mode=Mode.OFF_POLICY)


def test_max_samples_loads_the_first_records_of_a_file_broken_after_them_and_says_so(
    tokenizer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = chat(("user", "What is 2+2?"), ("assistant", "4."))
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [good, good])
    path.write_text(path.read_text() + '{"messages": \n')
    source = DataSource(path=str(path), max_samples=2)
    with caplog.at_level("INFO", logger="kubedistill.runtime.data.load"):
        loaded = load_samples(source, spec(source), tokenizer, mode=Mode.OFF_POLICY)
    assert [sample.source for sample in loaded.samples] == [f"{path}:1", f"{path}:2"]
    assert (
        "spec.data.train: took the first 2 records (maxSamples); any after them were not read" in caplog.text
    )
    with pytest.raises(BadRecordError, match=f"{path}:3"):
        load_samples(DataSource(path=str(path)), spec(source), tokenizer, mode=Mode.OFF_POLICY)
