"""Records longer than spec.data.maxLength / promptMaxLength: the chat stays well formed, and every record
that loses something says what it lost."""

import logging
from pathlib import Path

import pytest

from kubedistill.api.spec import DataSource, Mode
from kubedistill.runtime.data import load_samples

from .builders import chat, decoded_targets, spec, write_jsonl
from .test_tokenize import CONTEXT, QUESTION, build

SYSTEM = "You are a careful tutor."
QUESTION_TEXT = "What is the capital of France?"
ANSWER = "Paris is the capital of France."
LONG_QUESTION = chat(
    ("system", SYSTEM),
    ("user", "Tell me more about it. " * 8 + QUESTION_TEXT),
    ("assistant", ANSWER),
)
PROMPT_HEAD = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
PROMPT_TAIL = f"{QUESTION_TEXT}<|im_end|>\n<|im_start|>assistant\n"


def _dialogue(turns: int) -> dict:
    """A system prompt, then `turns` exchanges, each question numbered so that kept turns can be told."""
    messages = [("system", SYSTEM)]
    for turn in range(turns):
        messages += [
            ("user", f"What is {turn}+{turn}? Tell me more about it."),
            ("assistant", f"It is {2 * turn}."),
        ]
    return chat(*messages)


def test_a_record_that_fits_is_not_marked_truncated(tokenizer) -> None:
    assert build(tokenizer, LONG_QUESTION).truncation is None


def test_a_long_dialogue_drops_its_earliest_turns_and_keeps_its_system_prompt(tokenizer) -> None:
    dialogue = _dialogue(20)
    sample = build(tokenizer, dialogue, max_length=128)
    text = tokenizer.decode(sample.input_ids)
    assert len(sample.input_ids) <= 128
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is ")
    assert text.endswith("<|im_start|>assistant\nIt is 38.<|im_end|>\n"), "the latest turn is kept whole"
    assert "What is 0+0?" not in text
    kept_turns = text.count("<|im_start|>user\n")
    dropped = 2 * (20 - kept_turns)
    assert (
        sample.truncation
        == f"dropped its {dropped} earliest messages of 41 (whole turns after the system prompt)"
    )
    assert decoded_targets(tokenizer, sample.input_ids, sample.target_mask).count("<|im_end|>") == kept_turns


def test_dropping_turns_keeps_as_many_as_fit(tokenizer) -> None:
    dialogue = _dialogue(20)
    sample = build(tokenizer, dialogue, max_length=128)
    kept_turns = tokenizer.decode(sample.input_ids).count("<|im_start|>user\n")
    one_more = dict(
        dialogue, messages=[dialogue["messages"][0], *dialogue["messages"][-2 * kept_turns - 2 :]]
    )
    assert len(build(tokenizer, one_more).input_ids) > 128


def test_a_long_prompt_loses_the_beginning_of_its_content_never_its_headers_or_system_prompt(
    tokenizer,
) -> None:
    full = build(tokenizer, LONG_QUESTION)
    cut = build(tokenizer, LONG_QUESTION, prompt_max_length=32)
    assert full.prompt_length > 32
    prompt = tokenizer.decode(cut.input_ids[: cut.prompt_length])
    assert cut.prompt_length == 32
    assert prompt.startswith(PROMPT_HEAD)
    assert prompt.endswith(PROMPT_TAIL)
    assert cut.labels() == full.labels(), "the response is whole"
    assert (
        cut.truncation == f"cut {full.prompt_length - 32} of its {full.prompt_length} prompt tokens "
        "to fit promptMaxLength 32"
    )


def test_the_prompt_is_cut_before_the_response_is(tokenizer) -> None:
    full = build(tokenizer, LONG_QUESTION)
    cut = build(tokenizer, LONG_QUESTION, prompt_max_length=32, max_length=36)
    assert (cut.prompt_length, cut.num_targets) == (32, 4)
    assert cut.labels() == full.labels()[:4]
    assert cut.truncation.endswith(
        f"; cut {full.num_targets - 4} of its {full.num_targets} response tokens to fit maxLength 36"
    )


def test_a_long_on_policy_prompt_keeps_its_headers_and_the_end_of_its_question(tokenizer) -> None:
    prompt = chat(*[(m["role"], m["content"]) for m in LONG_QUESTION["messages"][:2]])
    cut = build(tokenizer, prompt, mode=Mode.ON_POLICY, prompt_max_length=32)
    text = tokenizer.decode(cut.input_ids)
    assert len(cut.input_ids) == cut.prompt_length == 32
    assert text.startswith(PROMPT_HEAD) and text.endswith(PROMPT_TAIL)
    assert cut.truncation.startswith("cut ")


def test_the_system_prompt_is_cut_only_when_nothing_else_is_left(tokenizer) -> None:
    record = chat(("system", SYSTEM * 4), ("user", QUESTION_TEXT), ("assistant", ANSWER))
    cut = build(tokenizer, record, prompt_max_length=20)
    prompt = tokenizer.decode(cut.input_ids[: cut.prompt_length])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith(
        "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n"
    )
    assert cut.truncation.endswith("the system prompt's among them")


def test_a_prompt_whose_markup_alone_is_too_long_is_a_bad_record_naming_the_limit(tokenizer) -> None:
    with pytest.raises(
        ValueError, match=r"^mem:7: the prompt has \d+ tokens, .* promptMaxLength 8 \(the chat markup stays\)"
    ):
        build(tokenizer, LONG_QUESTION, prompt_max_length=8)


def test_the_teacher_prompt_is_cut_inside_its_content_too(tokenizer) -> None:
    record = QUESTION | {"context": "You are a careful tutor. " * 6 + "What is 2+2?"}
    cut = build(tokenizer, record, CONTEXT, prompt_max_length=20)
    teacher_prompt = cut.teacher_target_mask.tolist().index(True)
    assert teacher_prompt == 20
    assert tokenizer.decode(cut.teacher_input_ids[:teacher_prompt]).startswith("<|im_start|>user\n")
    assert tokenizer.decode(cut.teacher_input_ids[:teacher_prompt]).endswith(
        "What is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert cut.teacher_labels() == cut.labels()


def test_the_loader_counts_every_shortened_record_and_warns_naming_the_first(
    tokenizer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = write_jsonl(tmp_path / "train.jsonl", [QUESTION, _dialogue(20), QUESTION, _dialogue(12)])
    with caplog.at_level(logging.WARNING):
        loaded = load_samples(source, spec(source, max_length=128), tokenizer, mode=Mode.OFF_POLICY)
    assert [sample.source for sample in loaded.truncated] == [f"{source.path}:2", f"{source.path}:4"]
    warning = next(record.getMessage() for record in caplog.records if "shortened" in record.getMessage())
    assert warning.startswith(
        "spec.data.train: 2 of 4 records were shortened to fit spec.data.maxLength 128 / "
        "promptMaxLength 2048; "
        f"the first: {source.path}:2: dropped its "
    )


def test_an_eval_source_is_named_in_the_warning(
    tokenizer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = write_jsonl(tmp_path / "eval.jsonl", [_dialogue(20)])
    with caplog.at_level(logging.WARNING):
        load_samples(
            source, spec(source, max_length=128), tokenizer, mode=Mode.OFF_POLICY, field="spec.data.eval"
        )
    assert any(record.getMessage().startswith("spec.data.eval: 1 of 1 records") for record in caplog.records)


def test_plain_text_prompts_lose_their_beginning(tokenizer) -> None:
    pairs = DataSource(path="train.jsonl", prompt_key="prompt", response_key="response")
    fields = {"prompt": "Tell me more about it. " * 8 + "What is 2+2?", "response": " The answer is 4."}
    full = build(tokenizer, fields, pairs, apply_chat_template=False)
    cut = build(tokenizer, fields, pairs, apply_chat_template=False, prompt_max_length=10)
    assert cut.input_ids.tolist() == full.input_ids[full.prompt_length - 10 :].tolist()
    assert cut.truncation.startswith("cut ")
