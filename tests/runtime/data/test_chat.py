import copy
import itertools

import pytest

from kubedistill.runtime.data.chat import TemplateRejection, encode_chat, encode_plain
from kubedistill.runtime.data.errors import ChatTemplateError

from .builders import chat, decoded_targets

SINGLE_TURN = chat(("system", "Be brief."), ("user", "What is 2+2?"), ("assistant", "The answer is 4."))[
    "messages"
]
MULTI_TURN = chat(
    ("system", "You are a careful tutor."),
    ("user", "What is 2+2?"),
    ("assistant", "The answer is 4."),
    ("user", "What is the capital of France?"),
    ("assistant", "Paris is the capital of France."),
)["messages"]


def target_runs(tokenizer, ids: list[int], mask: list[bool]) -> list[str]:
    """The decoded text of each contiguous run of targets."""
    runs, position = [], 0
    for target, group in itertools.groupby(mask):
        length = len(list(group))
        if target:
            runs.append(tokenizer.decode(ids[position : position + length]))
        position += length
    return runs


def with_template(tokenizer, template: str):
    variant = copy.deepcopy(tokenizer)
    variant.chat_template = template
    return variant


def test_targets_are_the_assistant_content_and_its_end_of_turn_token(tokenizer) -> None:
    encoded = encode_chat(tokenizer, SINGLE_TURN, first_response=2, add_generation_prompt=False)
    assert decoded_targets(tokenizer, encoded.ids, encoded.mask) == "The answer is 4.<|im_end|>"


def test_system_user_and_assistant_header_are_not_targets(tokenizer) -> None:
    encoded = encode_chat(tokenizer, SINGLE_TURN, first_response=2, add_generation_prompt=False)
    assert tokenizer.decode(encoded.ids[: encoded.first_target]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_the_newline_after_the_end_of_turn_token_is_not_a_target(tokenizer) -> None:
    encoded = encode_chat(tokenizer, SINGLE_TURN, first_response=2, add_generation_prompt=False)
    assert tokenizer.decode(encoded.ids[-2:]) == "<|im_end|>\n"
    assert encoded.mask[-2:].tolist() == [True, False]


def test_every_assistant_turn_of_a_multi_turn_chat_is_a_target_and_nothing_else(tokenizer) -> None:
    encoded = encode_chat(tokenizer, MULTI_TURN, first_response=2, add_generation_prompt=False)
    assert target_runs(tokenizer, encoded.ids, encoded.mask) == [
        "The answer is 4.<|im_end|>",
        "Paris is the capital of France.<|im_end|>",
    ]


def test_assistant_messages_before_first_response_stay_context(tokenizer) -> None:
    encoded = encode_chat(tokenizer, MULTI_TURN, first_response=4, add_generation_prompt=False)
    assert target_runs(tokenizer, encoded.ids, encoded.mask) == ["Paris is the capital of France.<|im_end|>"]


def test_a_prompt_ends_with_the_generation_prompt_and_has_no_targets(tokenizer) -> None:
    encoded = encode_chat(tokenizer, SINGLE_TURN[:2], first_response=2, add_generation_prompt=True)
    assert tokenizer.decode(encoded.ids).endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert not any(encoded.mask)


# Jinja's `loop.last` lets a template render the same message differently depending on what follows it.
REWRITES_EARLIER_TURNS = (
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{%- if m.role == 'assistant' and not loop.last %}[earlier answer]{% else %}{{ m.content }}{% endif %}"
    "<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
GENERATION_PROMPT_NOT_IN_MESSAGES = (
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n<answer>\n{%- endif %}"
)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        pytest.param(
            REWRITES_EARLIER_TURNS, "differently once later turns follow", id="rewrites-earlier-turns"
        ),
        pytest.param(
            GENERATION_PROMPT_NOT_IN_MESSAGES,
            "without the generation prompt it renders before it",
            id="generation-prompt-differs",
        ),
    ],
)
def test_a_template_without_the_prefix_property_is_refused(tokenizer, template: str, message: str) -> None:
    with pytest.raises(ChatTemplateError, match=message):
        encode_chat(
            with_template(tokenizer, template), MULTI_TURN, first_response=2, add_generation_prompt=False
        )


def test_a_chat_the_template_raises_on_is_rejected_with_the_templates_reason(tokenizer) -> None:
    strict = with_template(
        tokenizer,
        "{%- for m in messages %}"
        "{%- if m.role == 'system' %}{{ raise_exception('no system role') }}{%- endif %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}",
    )
    with pytest.raises(TemplateRejection, match="no system role"):
        encode_chat(strict, SINGLE_TURN, first_response=2, add_generation_prompt=False)


def test_plain_text_is_prompt_then_response_then_eos_with_the_response_as_targets(tokenizer) -> None:
    encoded = encode_plain(tokenizer, "What is 2+2?", " The answer is 4.")
    assert tokenizer.decode(encoded.ids) == "What is 2+2? The answer is 4.<|im_end|>"
    assert decoded_targets(tokenizer, encoded.ids, encoded.mask) == " The answer is 4.<|im_end|>"


def test_a_plain_token_straddling_prompt_and_response_is_a_target(tokenizer) -> None:
    assert tokenizer.tokenize(" 4") == ["Ġ4"]
    encoded = encode_plain(tokenizer, "The answer is ", "4.")
    assert decoded_targets(tokenizer, encoded.ids, encoded.mask) == " 4.<|im_end|>"


def test_a_plain_prompt_alone_has_no_targets(tokenizer) -> None:
    encoded = encode_plain(tokenizer, "What is 2+2?", None)
    assert tokenizer.decode(encoded.ids) == "What is 2+2?"
    assert not any(encoded.mask)
