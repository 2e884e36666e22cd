"""Which tokens carry the loss under chat templates that real models ship (TRL's chat_templates folder holds
them byte for byte), paired with the tiny tokenizer: the assistant's, its end-of-turn token included, each
as the template renders it when the model generates it, and nothing of the prompt."""

import copy
from pathlib import Path
from typing import Any

import pytest
import trl

from kubedistill.api.spec import Mode
from kubedistill.runtime.data import load_samples

from .builders import decoded_targets, spec, write_jsonl

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
SYSTEM = {"role": "system", "content": "Be brief."}
QUESTION = {"role": "user", "content": "What is 2+2?"}
FOLLOW_UP = {"role": "user", "content": "And 3+3?"}
PROMPT_TEXTS = ("Be brief.", "What is 2+2?", "And 3+3?")
R1_EOS = "<｜end▁of▁sentence｜>"
ADD = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}

THINKING_TWO_TURNS = [
    SYSTEM,
    QUESTION,
    {"role": "assistant", "content": "4", "reasoning_content": "two and two"},
    FOLLOW_UP,
    {"role": "assistant", "content": "6", "reasoning_content": "three and three"},
]
TOOL_CALL = [
    QUESTION,
    {"role": "assistant", "content": "", "tool_calls": [ADD]},
    {"role": "tool", "content": "4"},
    {"role": "assistant", "content": "The answer is 4."},
]
TWO_TURNS = [
    SYSTEM,
    QUESTION,
    {"role": "assistant", "content": "4"},
    FOLLOW_UP,
    {"role": "assistant", "content": "6"},
]


def with_template(tokenizer: Any, name: str) -> Any:
    copied = copy.deepcopy(tokenizer)
    copied.chat_template = (TEMPLATES / f"{name}.jinja").read_text()
    return copied


def trained(tmp_path: Path, tokenizer: Any, messages: list[dict[str, Any]], **data: Any) -> list[str]:
    """Each sample's targets, decoded."""
    source = write_jsonl(tmp_path / "train.jsonl", [{"messages": messages}])
    loaded = load_samples(source, spec(source, **data), tokenizer, mode=Mode.OFF_POLICY)
    return [decoded_targets(tokenizer, list(s.input_ids), list(s.target_mask)) for s in loaded.samples]


@pytest.mark.parametrize(
    ("template", "messages", "samples"),
    [
        # Reasoning rendered for the turns after the last question only: a sample per question.
        pytest.param(
            "qwen3",
            THINKING_TWO_TURNS,
            [
                "<think>\ntwo and two\n</think>\n\n4<|im_end|>",
                "<think>\nthree and three\n</think>\n\n6<|im_end|>",
            ],
            id="qwen3-thinking-two-turns",
        ),
        pytest.param(
            "qwen3",
            TOOL_CALL,
            # A message without reasoning gets the empty thinking block only while it is the last.
            [
                '<think>\n\n</think>\n\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 2}}'
                "\n</tool_call><|im_end|>",
                "<think>\n\n</think>\n\nThe answer is 4.<|im_end|>",
            ],
            id="qwen3-tool-call",
        ),
        # Qwen3.5's generation prompt opens the thinking block: the model writes from inside it.
        pytest.param(
            "qwen3_5_think",
            THINKING_TWO_TURNS,
            ["two and two\n</think>\n\n4<|im_end|>", "three and three\n</think>\n\n6<|im_end|>"],
            id="qwen3.5-thinking-two-turns",
        ),
        pytest.param("llama3_1", TWO_TURNS, ["4<|eot_id|>6<|eot_id|>"], id="llama3.1-two-turns"),
        pytest.param(
            "llama3_1",
            TOOL_CALL,
            ['{"name": "add", "parameters": {"a": 2, "b": 2}}<|eot_id|>The answer is 4.<|eot_id|>'],
            id="llama3.1-tool-call",
        ),
        # gpt-oss ends the last turn <|return|> and earlier ones <|end|>, and drops their analysis.
        pytest.param(
            "gptoss",
            THINKING_TWO_TURNS,
            [
                "<|channel|>analysis<|message|>two and two<|end|><|start|>assistant<|channel|>final"
                "<|message|>4<|return|>",
                "<|channel|>analysis<|message|>three and three<|end|><|start|>assistant<|channel|>final"
                "<|message|>6<|return|>",
            ],
            id="gpt-oss-thinking-two-turns",
        ),
        pytest.param(
            "gptoss",
            TOOL_CALL,
            [
                ' to=functions.add<|channel|>commentary json<|message|>{"a": 2, "b": 2}<|call|>'
                "<|channel|>final<|message|>The answer is 4.<|return|>"
            ],
            id="gpt-oss-tool-call",
        ),
        pytest.param("gemma3", TWO_TURNS, ["4<end_of_turn>6<end_of_turn>"], id="gemma3-two-turns"),
        # DeepSeek-R1's generation prompt opens the thinking block its rendered answers lack: each answer is
        # trained as the model writes it after `<think>\n`, in a sample of its own.
        pytest.param(
            "deepseek_r1_distill",
            THINKING_TWO_TURNS,
            [f"two and two\n</think>\n\n4{R1_EOS}", f"three and three\n</think>\n\n6{R1_EOS}"],
            id="deepseek-r1-thinking-two-turns",
        ),
        pytest.param(
            "deepseek_r1_distill",
            TWO_TURNS,
            [f"\n</think>\n\n4{R1_EOS}", f"\n</think>\n\n6{R1_EOS}"],
            id="deepseek-r1-two-turns-without-reasoning",
        ),
        # TRL's DeepSeek-V3 template prefills `<think>\n` too, but renders tool calls beside content; after
        # tool results the model answers without the opener.
        pytest.param(
            "deepseekv3",
            TOOL_CALL,
            [
                "\n</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n"
                f'{{"a": 2, "b": 2}}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>{R1_EOS}',
                f"The answer is 4.{R1_EOS}",
            ],
            id="deepseek-v3-tool-call",
        ),
        pytest.param(
            "qwen2_5",
            TOOL_CALL,
            [
                '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 2}}\n</tool_call><|im_end|>'
                "The answer is 4.<|im_end|>"
            ],
            id="qwen2.5-tool-call",
        ),
    ],
)
def test_each_assistant_message_is_trained_once_as_generated_and_no_prompt_token(
    tmp_path: Path, tokenizer: Any, template: str, messages: list[dict[str, Any]], samples: list[str]
) -> None:
    targets = trained(tmp_path, with_template(tokenizer, template), messages)
    assert targets == samples
    assert not [text for text in PROMPT_TEXTS for target in targets if text in target]


def prompts_and_targets(tmp_path: Path, tokenizer: Any, messages: list[dict[str, Any]], **data: Any) -> list:
    """Each sample's prompt (the tokens before its first target) and targets, decoded."""
    source = write_jsonl(tmp_path / "train.jsonl", [{"messages": messages}])
    loaded = load_samples(source, spec(source, **data), tokenizer, mode=Mode.OFF_POLICY)
    return [
        (
            tokenizer.decode(s.input_ids[: s.prompt_length]),
            decoded_targets(tokenizer, list(s.input_ids), list(s.target_mask)),
        )
        for s in loaded.samples
    ]


SECOND_R1_PROMPT = (
    f"Be brief.<｜User｜>What is 2+2?<｜Assistant｜>4{R1_EOS}<｜User｜>And 3+3?<｜Assistant｜><think>\n"
)


def test_deepseek_r1_trains_each_answer_after_the_prompt_it_sends_with_earlier_answers_as_it_renders_them(
    tmp_path: Path, tokenizer: Any
) -> None:
    """The prefilled `<think>\\n` is prompt, the thought, `</think>` and end of sentence are targets, and the
    second question sees the first answer without its reasoning, as DeepSeek's template cuts it."""
    r1 = with_template(tokenizer, "deepseek_r1_distill")
    assert prompts_and_targets(tmp_path, r1, THINKING_TWO_TURNS) == [
        ("Be brief.<｜User｜>What is 2+2?<｜Assistant｜><think>\n", f"two and two\n</think>\n\n4{R1_EOS}"),
        (
            SECOND_R1_PROMPT,
            f"three and three\n</think>\n\n6{R1_EOS}",
        ),
    ]
    assert prompts_and_targets(tmp_path, r1, THINKING_TWO_TURNS, trainTurns="last") == [
        (
            SECOND_R1_PROMPT,
            f"three and three\n</think>\n\n6{R1_EOS}",
        )
    ]


def test_deepseek_r1_drops_earlier_turns_to_fit_the_thought_it_trains_not_only_the_answer_it_renders(
    tmp_path: Path, tokenizer: Any
) -> None:
    """A chat too long for maxLength loses its earliest turns before its response is cut; for DeepSeek-R1 the
    length is the sample's, the last answer's thought included, which the template's rendering of the chat
    cuts off."""
    r1 = with_template(tokenizer, "deepseek_r1_distill")
    thought = " ".join(["two and two make four"] * 12)
    last = [
        {"role": "user", "content": "And 4+4?"},
        {"role": "assistant", "content": "8", "reasoning_content": thought},
    ]
    history = [
        QUESTION,
        {"role": "assistant", "content": "4"},
        FOLLOW_UP,
        {"role": "assistant", "content": "6"},
    ]

    def last_sample(messages: list[dict[str, Any]], **data: Any) -> Any:
        source = write_jsonl(tmp_path / "train.jsonl", [{"messages": messages}])
        limits = {"maxLength": 4096, "promptMaxLength": 4096, **data}
        loaded = load_samples(source, spec(source, trainTurns="last", **limits), r1, mode=Mode.OFF_POLICY)
        (sample,) = loaded.samples
        return sample

    one_turn_dropped = len(last_sample([SYSTEM, *history[2:], *last]).input_ids)
    both_dropped = len(last_sample([SYSTEM, *last]).input_ids)
    thought_tokens = len(r1(thought, add_special_tokens=False)["input_ids"])
    assert one_turn_dropped - thought_tokens <= both_dropped < one_turn_dropped, (
        "one turn dropped, the chat as rendered fits; the sample does not"
    )
    fitted = last_sample([SYSTEM, *history, *last], maxLength=both_dropped)
    assert len(fitted.input_ids) == both_dropped
    assert decoded_targets(r1, list(fitted.input_ids), list(fitted.target_mask)) == (
        f"{thought}\n</think>\n\n8{R1_EOS}"
    )
    assert fitted.truncation.startswith("dropped its 4 earliest messages of 7"), fitted.truncation


@pytest.mark.parametrize(
    "answer",
    ["<think>\ntwo and two\n</think>\n\n4", "two and two</think>4"],
    ids=["whole-block", "without-opener"],
)
def test_deepseek_r1_trains_a_thought_inline_in_the_answer_that_its_template_cuts_off(
    tmp_path: Path, tokenizer: Any, answer: str
) -> None:
    r1 = with_template(tokenizer, "deepseek_r1_distill")
    chat = [QUESTION, {"role": "assistant", "content": answer}]
    assert trained(tmp_path, r1, chat) == [f"two and two\n</think>\n\n4{R1_EOS}"]


def test_deepseek_r1s_training_variant_as_a_template_file_trains_reasoning_content_as_the_original_does(
    tmp_path: Path, tokenizer: Any
) -> None:
    """TRL's variant renders content as it is: a thought held in reasoning_content is trained after the
    prefilled opener, one inline in the content is history too, so the chat is one sample."""
    r1 = with_template(tokenizer, "deepseek_r1_distill")
    variant = str(TEMPLATES / "deepseek_r1_distill_training.jinja")
    assert trained(tmp_path, r1, THINKING_TWO_TURNS, chatTemplate=variant) == [
        f"two and two\n</think>\n\n4{R1_EOS}",
        f"three and three\n</think>\n\n6{R1_EOS}",
    ]
    inline = [
        QUESTION,
        {"role": "assistant", "content": "<think>\ntwo\n</think>\n\n4"},
        FOLLOW_UP,
        {"role": "assistant", "content": "three</think>6"},
    ]
    assert trained(tmp_path, r1, inline, chatTemplate=variant) == [
        f"two\n</think>\n\n4{R1_EOS}three\n</think>\n\n6{R1_EOS}"
    ]


def test_deepseek_r1s_answer_is_tokenised_apart_from_the_prefilled_opener_as_at_generation(
    tmp_path: Path, tokenizer: Any
) -> None:
    """Qwen's tokenizers (the R1 distills') have a `\\n\\n` token: tokenised whole, the opener's newline and
    the empty thought's would merge into one token the model never sees after the prompt it is sent."""
    r1 = with_template(tokenizer, "deepseek_r1_distill")
    r1.add_tokens(["\n\n"])
    source = write_jsonl(
        tmp_path / "train.jsonl", [{"messages": [QUESTION, {"role": "assistant", "content": "4"}]}]
    )
    (sample,) = load_samples(source, spec(source), r1, mode=Mode.OFF_POLICY).samples
    ids = sample.input_ids.tolist()
    assert ids[: sample.prompt_length] == r1("<｜User｜>What is 2+2?<｜Assistant｜><think>\n")["input_ids"]
    assert ids[sample.prompt_length :] == r1(f"\n</think>\n\n4{R1_EOS}")["input_ids"]
    assert (
        sample.target_mask[sample.prompt_length :].all()
        and not sample.target_mask[: sample.prompt_length].any()
    )


def test_chat_template_kwargs_reach_the_template_qwen3_without_thinking_trains_the_answer_alone(
    tmp_path: Path, tokenizer: Any
) -> None:
    """With enable_thinking false, Qwen3's generation prompt holds the empty thinking block."""
    qwen3 = with_template(tokenizer, "qwen3")
    chat = [QUESTION, {"role": "assistant", "content": "4"}]
    assert trained(tmp_path, qwen3, chat) == ["<think>\n\n</think>\n\n4<|im_end|>"]
    assert trained(tmp_path, qwen3, chat, chatTemplateKwargs={"enable_thinking": False}) == ["4<|im_end|>"]


def test_a_chat_template_file_replaces_the_tokenizers_and_a_training_variant_trains_every_turn_at_once(
    tmp_path: Path, tokenizer: Any
) -> None:
    """TRL's Qwen3 training variant keeps every turn's reasoning: one sample whatever follows."""
    qwen3 = with_template(tokenizer, "qwen3")
    variant = str(TEMPLATES / "qwen3_training.jinja")
    assert trained(tmp_path, qwen3, THINKING_TWO_TURNS, chatTemplate=variant) == [
        "<think>\ntwo and two\n</think>\n\n4<|im_end|><think>\nthree and three\n</think>\n\n6<|im_end|>"
    ]


def test_a_chat_template_file_that_is_not_there_is_named(tmp_path: Path, tokenizer: Any) -> None:
    with pytest.raises(Exception, match=r"spec\.data\.chatTemplate: cannot read the chat template file"):
        trained(tmp_path, tokenizer, TWO_TURNS, chatTemplate=str(tmp_path / "missing.jinja"))
