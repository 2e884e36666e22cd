"""Which tokens carry the loss under chat templates that real models ship (TRL's chat_templates folder holds
them byte for byte), paired with the tiny tokenizer: the assistant's, its end-of-turn token included, each
as the template renders it when the model generates it, and nothing of the prompt."""

import copy
from pathlib import Path
from typing import Any

import pytest
import trl

from kubedistill.api.spec import Mode
from kubedistill.runtime.data import ChatTemplateError, load_samples

from .builders import decoded_targets, spec, write_jsonl

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
SYSTEM = {"role": "system", "content": "Be brief."}
QUESTION = {"role": "user", "content": "What is 2+2?"}
FOLLOW_UP = {"role": "user", "content": "And 3+3?"}
PROMPT_TEXTS = ("Be brief.", "What is 2+2?", "And 3+3?")
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


def test_deepseek_r1s_template_whose_prompt_opens_a_thinking_block_its_history_lacks_is_refused(
    tmp_path: Path, tokenizer: Any
) -> None:
    """It prefills `<think>\\n` and cuts every earlier answer's reasoning off, so no rendering of the chat
    shows an answer as the model wrote it (TRL's training variant neither)."""
    with pytest.raises(ChatTemplateError, match="without the generation prompt it renders before it"):
        trained(tmp_path, with_template(tokenizer, "deepseek_r1_distill"), THINKING_TWO_TURNS)


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
