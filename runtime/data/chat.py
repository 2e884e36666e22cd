"""Token ids and target masks from text: chats through the tokenizer's chat template, or plain text.

Chat templates of real models (Qwen's among them) carry no `{% generation %}` markers, so assistant tokens
are found from the template's own output: for assistant message i, the chat rendered up to message i - 1
with the generation prompt must be a prefix of the chat rendered up to message i, which must be a prefix of
the whole chat. The characters between the two prefixes are the message's content and end-of-turn markup;
the fast tokenizer's offsets map them to tokens. A template that breaks the prefix property (e.g. one that
rewrites earlier turns) raises `ChatTemplateError` instead of producing a wrong mask.

With `with_spans`, each target token also gets its span in the response text (`data.alignment`), which is
how a teacher with another tokenizer is matched to the student.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jinja2 import TemplateError

from kubedistill.runtime.data.alignment import Span, Turn, locate_turn, response_spans
from kubedistill.runtime.data.errors import ChatTemplateError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]


class TemplateRejection(ValueError):
    """The chat template raised on this chat (e.g. roles that do not alternate): the record is bad."""


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    mask: list[bool]
    spans: list[Span] | None = None
    """With `with_spans`: each target's span in the response text, in order."""

    @property
    def first_target(self) -> int:
        """Index of the first target token; the length when there is none."""
        return next((i for i, target in enumerate(self.mask) if target), len(self.mask))

    @property
    def num_targets(self) -> int:
        return sum(self.mask)


def encode_chat(
    tokenizer: "PreTrainedTokenizerBase",
    messages: Sequence[Message],
    *,
    first_response: int,
    add_generation_prompt: bool,
    with_spans: bool = False,
) -> Encoded:
    """The chat's tokens; targets are the assistant messages from index `first_response` on.

    Each target span covers the message's content and the end-of-turn token after it; the whitespace a
    template puts between turns is left out, because generation stops at the end-of-turn token and never
    produces it.
    """
    text = _render(tokenizer, messages, add_generation_prompt)
    spans = []
    turns: list[Turn] = []
    for i in range(first_response, len(messages)):
        if messages[i]["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not through.startswith(before):
            raise ChatTemplateError(
                f"the chat template renders assistant message {i} without the generation prompt it "
                f"renders before it ({before[-40:]!r} is not followed by the message); assistant tokens "
                "cannot be found with this template"
            )
        if not text.startswith(through):
            raise ChatTemplateError(
                f"the chat template renders messages 0..{i} differently once later turns follow (Qwen3's "
                "template, for one, drops the thinking block of earlier turns), so assistant tokens cannot "
                "be found in this chat; use a template that renders every turn the same way, or one-turn "
                "chats"
            )
        spans.append((len(before), max(len(before), len(through.rstrip()))))
        if with_spans:
            base = turns[-1].next_base if turns else 0
            turn = locate_turn(text, *spans[-1], messages[i]["content"], base)
            if turn is None:
                raise ChatTemplateError(
                    f"the chat template changes the content of assistant message {i}, so its tokens cannot "
                    "be matched with the other model's tokens (cross-tokenizer distillation); use a template "
                    "that renders assistant messages as they are"
                )
            turns.append(turn)
    return _encode_spans(
        tokenizer, text, spans, add_special_tokens=False, turns=turns if with_spans else None
    )


def encode_plain(
    tokenizer: "PreTrainedTokenizerBase", prompt: str, response: str | None, with_spans: bool = False
) -> Encoded:
    """`prompt + response + eos` with the response and eos as targets; the prompt alone without a response.

    Special tokens (e.g. a BOS) are added as the tokenizer adds them to any text.
    """
    if response is None:
        return _encode_spans(tokenizer, prompt, [], add_special_tokens=True, turns=[] if with_spans else None)
    text = prompt + response + tokenizer.eos_token
    end = len(prompt) + len(response)
    turns = [Turn(len(prompt), len(text), len(prompt), end, 0, len(response), 0)] if with_spans else None
    return _encode_spans(tokenizer, text, [(len(prompt), len(text))], add_special_tokens=True, turns=turns)


def _render(
    tokenizer: "PreTrainedTokenizerBase", messages: Sequence[Message], add_generation_prompt: bool
) -> str:
    try:
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as error:
        raise TemplateRejection(f"the chat template rejects the chat: {error}") from error


def _encode_spans(
    tokenizer: "PreTrainedTokenizerBase",
    text: str,
    spans: list[tuple[int, int]],
    *,
    add_special_tokens: bool,
    turns: list[Turn] | None,
) -> Encoded:
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    mask = _overlaps(offsets, spans)
    return Encoded(
        list(encoding["input_ids"]), mask, None if turns is None else response_spans(offsets, mask, turns)
    )


def _overlaps(offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """Per token, whether its characters overlap one of the (sorted, disjoint) spans.

    Overlap rather than containment, so a token that straddles the boundary between prompt and response
    (possible in plain text, e.g. " 4") still trains the response. Token offsets ascend, so one pass over
    tokens and spans together suffices.
    """
    mask, span = [], 0
    for start, end in offsets:
        while span < len(spans) and spans[span][1] <= start:
            span += 1
        mask.append(span < len(spans) and spans[span][0] < end)
    return mask
