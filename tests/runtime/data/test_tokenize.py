import copy

import pytest

from kubedistill.api.spec import DataSource, DataSpec, Mode
from kubedistill.runtime.data.errors import BadRecordError
from kubedistill.runtime.data.records import Record
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.data.tokenize import SampleBuilder
from kubedistill.runtime.demo.tiny import build_tokenizer

from .builders import CORPUS, chat, decoded_targets

CHATS = DataSource(path="train.jsonl")
PAIRS = DataSource(path="train.jsonl", prompt_key="prompt", response_key="response")
ROOMY = {"max_length": 4096, "prompt_max_length": 2048}
QUESTION = chat(("user", "What is 2+2?"), ("assistant", "The answer is 4."))
LONG = chat(
    ("system", "You are a careful tutor. " * 6),
    ("user", "What is the capital of France?"),
    ("assistant", "Paris is the capital of France. " * 4),
)


def build(
    tokenizer,
    fields: dict,
    source: DataSource = CHATS,
    mode: Mode = Mode.OFF_POLICY,
    teacher_tokenizer=None,
    **data: object,
) -> Sample:
    spec = DataSpec(train=source, **(ROOMY | data))
    return SampleBuilder(source, spec, tokenizer, mode, teacher_tokenizer or tokenizer)(
        Record("mem:7", fields)
    )


def test_a_chat_sample_keeps_its_source_and_its_prompt_ends_before_the_first_target(tokenizer) -> None:
    sample = build(tokenizer, QUESTION)
    assert sample.source == "mem:7"
    assert tokenizer.decode(sample.input_ids[: sample.prompt_length]).endswith("<|im_start|>assistant\n")
    assert sample.target_mask[sample.prompt_length]


@pytest.mark.parametrize("mode", [Mode.OFF_POLICY, Mode.SELF_DISTILLATION, Mode.SFT])
def test_every_training_mode_reads_a_record_the_same_way(tokenizer, mode: Mode) -> None:
    assert build(tokenizer, LONG, mode=mode) == build(tokenizer, LONG, mode=Mode.OFF_POLICY)


def test_a_prompt_response_record_with_the_template_is_a_user_and_an_assistant_message(tokenizer) -> None:
    pair = build(tokenizer, {"prompt": "What is 2+2?", "response": "The answer is 4."}, PAIRS)
    assert pair == build(tokenizer, QUESTION)


def test_a_prompt_response_record_without_the_template_is_plain_text_ending_in_eos(tokenizer) -> None:
    sample = build(
        tokenizer,
        {"prompt": "What is 2+2?", "response": " The answer is 4."},
        PAIRS,
        apply_chat_template=False,
    )
    assert tokenizer.decode(sample.input_ids) == "What is 2+2? The answer is 4.<|im_end|>"
    assert decoded_targets(tokenizer, sample.input_ids, sample.target_mask) == " The answer is 4.<|im_end|>"


def test_a_long_record_loses_the_end_of_its_response(tokenizer) -> None:
    full = build(tokenizer, LONG)
    cut = build(tokenizer, LONG, max_length=full.prompt_length + 5)
    assert cut.input_ids.tolist() == full.input_ids[: full.prompt_length + 5].tolist()
    assert cut.num_targets == 5
    assert cut.labels() == full.labels()[:5]


def test_a_prompt_that_leaves_no_room_for_the_response_is_a_bad_record(tokenizer) -> None:
    with pytest.raises(BadRecordError, match=r"^mem:7: the prompt alone has 30 tokens .* maxLength 30"):
        build(tokenizer, LONG, prompt_max_length=30, max_length=30)


ON_POLICY_PROMPT = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    ("fields", "source"),
    [
        pytest.param(QUESTION, CHATS, id="chat-without-its-trailing-answer"),
        pytest.param(chat(("user", "What is 2+2?")), CHATS, id="chat-without-an-answer"),
        pytest.param(
            {"prompt": "What is 2+2?"}, DataSource(path="p.jsonl", prompt_key="prompt"), id="prompt-key"
        ),
        pytest.param(
            {"prompt": "What is 2+2?", "response": "4"}, PAIRS, id="prompt-key-ignoring-the-response"
        ),
    ],
)
def test_an_on_policy_sample_is_the_prompt_with_the_generation_prompt(tokenizer, fields, source) -> None:
    sample = build(tokenizer, fields, source, mode=Mode.ON_POLICY)
    assert tokenizer.decode(sample.input_ids) == ON_POLICY_PROMPT
    assert not any(sample.target_mask)
    assert sample.prompt_length == len(sample.input_ids)


def test_an_on_policy_prompt_without_the_template_is_the_plain_prompt(tokenizer) -> None:
    source = DataSource(path="p.jsonl", prompt_key="prompt")
    sample = build(
        tokenizer, {"prompt": "What is 2+2?"}, source, mode=Mode.ON_POLICY, apply_chat_template=False
    )
    assert list(sample.input_ids) == tokenizer("What is 2+2?")["input_ids"]


CONTEXT = DataSource(path="train.jsonl", teacher_input_key="context")
CONTEXT_PAIRS = DataSource(
    path="train.jsonl", prompt_key="prompt", response_key="response", teacher_input_key="context"
)


@pytest.mark.parametrize(
    "context",
    [
        pytest.param("Answer tersely. What is 2+2?", id="string"),
        pytest.param(
            [{"role": "system", "content": "Answer tersely."}, {"role": "user", "content": "What is 2+2?"}],
            id="messages",
        ),
    ],
)
def test_the_teacher_sees_its_own_prompt_followed_by_the_same_response(tokenizer, context) -> None:
    sample = build(tokenizer, QUESTION | {"context": context}, CONTEXT)
    teacher_text = tokenizer.decode(sample.teacher_input_ids)
    assert "Answer tersely." in teacher_text
    assert "Answer tersely." not in tokenizer.decode(sample.input_ids)
    assert decoded_targets(tokenizer, sample.teacher_input_ids, sample.teacher_target_mask) == (
        "The answer is 4.<|im_end|>"
    )
    assert [sample.teacher_input_ids[t + 1] for t in sample.teacher_loss_positions()] == sample.labels()


def test_context_distillation_keeps_every_assistant_turn_of_a_chat_for_the_teacher(tokenizer) -> None:
    multi_turn = chat(
        ("user", "What is 2+2?"),
        ("assistant", "The answer is 4."),
        ("user", "What is the capital of France?"),
        ("assistant", "Paris is the capital of France."),
    )
    sample = build(tokenizer, multi_turn | {"context": "Be brief. What is 2+2?"}, CONTEXT)
    assert tokenizer.decode(sample.teacher_input_ids).endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis is the capital of France.<|im_end|>\n"
    )
    assert sample.teacher_target_mask.sum() == sample.num_targets


def test_prompt_response_records_give_the_teacher_the_context_key_as_its_prompt(tokenizer) -> None:
    fields = {
        "prompt": "What is 2+2?",
        "response": " The answer is 4.",
        "context": "Answer tersely. What is 2+2?",
    }
    sample = build(tokenizer, fields, CONTEXT_PAIRS, apply_chat_template=False)
    assert (
        tokenizer.decode(sample.teacher_input_ids)
        == "Answer tersely. What is 2+2? The answer is 4.<|im_end|>"
    )
    assert decoded_targets(tokenizer, sample.teacher_input_ids, sample.teacher_target_mask) == (
        " The answer is 4.<|im_end|>"
    )


def test_the_teacher_response_is_cut_where_the_students_is(tokenizer) -> None:
    full = build(tokenizer, LONG)
    cut = build(tokenizer, LONG | {"context": "Be brief."}, CONTEXT, max_length=full.prompt_length + 5)
    assert cut.num_targets == 5
    assert cut.teacher_target_mask[-1]
    assert [cut.teacher_input_ids[t + 1] for t in cut.teacher_loss_positions()] == cut.labels()


def test_an_on_policy_teacher_gets_its_own_prompt_with_the_generation_prompt(tokenizer) -> None:
    sample = build(tokenizer, QUESTION | {"context": "Be brief. What is 2+2?"}, CONTEXT, mode=Mode.ON_POLICY)
    assert tokenizer.decode(sample.teacher_input_ids) == (
        "<|im_start|>user\nBe brief. What is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not any(sample.teacher_target_mask)


def test_a_teacher_tokenizer_that_splits_the_response_differently_makes_a_bad_record(tokenizer) -> None:
    bytes_only = build_tokenizer(CORPUS, vocab_size=260)
    with pytest.raises(
        BadRecordError, match=r"^mem:7: the teacher sees \d+ response tokens, the student \d+$"
    ):
        build(tokenizer, QUESTION | {"context": "Be brief."}, CONTEXT, teacher_tokenizer=bytes_only)


@pytest.mark.parametrize(
    ("source", "data", "mode", "field"),
    [
        pytest.param(
            CHATS,
            {"apply_chat_template": False},
            Mode.OFF_POLICY,
            "spec.data.applyChatTemplate",
            id="chats-need-template",
        ),
        pytest.param(
            DataSource(path="p.jsonl", prompt_key="prompt"),
            {},
            Mode.OFF_POLICY,
            "spec.data.train.responseKey",
            id="prompt-without-response",
        ),
    ],
)
def test_settings_that_fail_every_record_are_refused_naming_the_field(
    tokenizer, source, data, mode, field
) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        build(tokenizer, QUESTION, source, mode=mode, **data)


def test_a_tokenizer_without_a_chat_template_is_refused_when_the_template_is_asked_for(tokenizer) -> None:
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(ValueError, match=r"^spec.data.applyChatTemplate: the tokenizer has no chat template"):
        build(plain, QUESTION)
