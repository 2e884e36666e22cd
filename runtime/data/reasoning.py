"""An assistant's reasoning in training records, and the chat templates that leave it out of what is trained.

Records carry a reasoning model's thinking beside the answer under one of three names: `reasoning_content`
(DeepSeek's API, vLLM, SGLang and the generation phase), `thinking` (gpt-oss's chat template reads this one)
or `reasoning` (vLLM's newer name). A message keeps it under both names templates read, as transformers 5
does itself (`_alias_reasoning_fields`), so it reaches every template that renders it whatever the
transformers version.

A template that renders no reasoning (Llama's, or any with spec.data.chatTemplateKwargs that turn it off)
trains the answers without it. That is reported, once per data source, naming the field and the template:
the rendered chat is compared with the one rendered without the message's reasoning, and where the two are
the same the reasoning is not in what is trained. A template that renders only the last turn's (Qwen3's) is
no such case: each earlier turn is trained in a part of its own (`chat.trained_parts`), with its reasoning.
Nor is DeepSeek-R1's, which renders none but opens the reasoning block in its generation prompt: each turn is
trained as the model writes it, reasoning included (`chat.written_turn`).
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubedistill.runtime.data.chat import OWN_FORMAT, ChatFormat, Message, render_chat, written_turn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

RECORD_KEYS = ("reasoning_content", "thinking", "reasoning")
"""The names a record's assistant message may carry its reasoning under, in the order they are looked at."""
TEMPLATE_KEYS = ("reasoning_content", "thinking")
"""The names chat templates read it by: Qwen3's and DeepSeek's `reasoning_content`, gpt-oss's `thinking`."""


def reasoning_key(message: Mapping[str, Any]) -> str | None:
    """The key under which a record's message carries its reasoning (a non-empty string); None without."""
    return next((key for key in RECORD_KEYS if isinstance(message.get(key), str) and message[key]), None)


@dataclass
class UnrenderedReasoning:
    """The records of one data source whose assistant reasoning the chat template leaves out."""

    spec_path: str
    """The source's field, e.g. `spec.data.train`."""
    template: str
    """Whose chat template: the tokenizer's name or path."""
    records: int = 0
    keys: set[str] = field(default_factory=set)
    """The record keys the lost reasoning came under."""
    first: str | None = None
    """`path:line (message i)` of the first."""

    def check(
        self,
        tokenizer: "PreTrainedTokenizerBase",
        source: str,
        raw: Sequence[Any],
        messages: Sequence[Message],
        parts: Sequence[tuple[int, int]],
        tools: list[Any] | None,
        chat_format: ChatFormat = OWN_FORMAT,
    ) -> None:
        """Count the record at `source` if the trained text lacks the reasoning of one of its responses
        (`raw`: the record's messages as written, which name the key). `parts`: (end, first) of each part
        the chat is trained in (`chat.trained_parts`)."""
        lost = []
        for end, first in parts:
            part = messages[:end]
            carrying = [i for i in range(first, end) if any(key in part[i] for key in TEMPLATE_KEYS)]
            if not carrying:
                continue
            rendered = render_chat(tokenizer, part, False, tools, chat_format)
            lost += [
                i
                for i in carrying
                if render_chat(tokenizer, _without(part, i), False, tools, chat_format) == rendered
                and (
                    i < end - 1
                    or written_turn(tokenizer, part, tools, chat_format)
                    == written_turn(tokenizer, _without(part, i), tools, chat_format)
                )
            ]
        if not lost:
            return
        self.records += 1
        self.keys.update(key for i in lost if (key := reasoning_key(raw[i])) is not None)
        if self.first is None:
            self.first = f"{source} (message {min(lost)})"

    def warn(self, records: int) -> None:
        """One warning for the source, if any of its `records` lost reasoning."""
        if not self.records:
            return
        log.warning(
            "%s: %d of %d records carry an assistant's reasoning (%s) that the chat template of %s does not "
            "render, so the run trains on their answers without it; the first: %s. Use a template that "
            "renders it, or drop the field to train on answers alone",
            self.spec_path,
            self.records,
            records,
            ", ".join(sorted(self.keys)),
            self.template,
            self.first,
        )


def _without(messages: Sequence[Message], i: int) -> list[Message]:
    stripped = {key: value for key, value in messages[i].items() if key not in TEMPLATE_KEYS}
    return [*messages[:i], stripped, *messages[i + 1 :]]
