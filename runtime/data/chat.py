"""Token ids and target masks from text: chats through the tokenizer's chat template, or plain text.

Chat templates of real models (Qwen's among them) carry no `{% generation %}` markers, so assistant tokens
are found from the template's own output: for assistant message i, the chat rendered up to message i - 1
with the generation prompt must be a prefix of the chat rendered up to message i, which must be a prefix of
the whole chat. The characters between the two prefixes are the message's content and end-of-turn markup;
the fast tokenizer's offsets map them to tokens. A template that breaks the prefix property (e.g. one that
rewrites earlier turns) raises `ChatTemplateError` instead of producing a wrong mask.

Such templates are common: Qwen3's drops the reasoning of the turns before the last question, gpt-oss's
ends the last turn `<|return|>` and earlier ones `<|end|>`. `trained_parts` splits a chat into the parts
that each train their assistant messages exactly as the template renders them when they are generated:
the whole chat trains the messages it renders as they were generated, and each earlier one that it
renders otherwise is trained in the chat cut after it.

DeepSeek-R1's template breaks the prefix property another way: its generation prompt opens the reasoning
block (`<｜Assistant｜><think>\\n`, so that the model always reasons) and its assistant turns render
without it (the answer alone, whatever reasoning the message carries). Where the generation prompt ends in
an opened `<think>` that the rendered turn lacks, the turn is trained as the model writes it: after the
prompt the template really sends, its reasoning, `</think>`, the answer and the end of turn
(`_written_turn`). Later turns see it as the template renders history, so each such turn ends a part of its
own.

With `with_spans`, each target token also gets its span in the response text (`data.alignment`), which is
how a teacher with another tokenizer is matched to the student.
"""

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from jinja2 import TemplateError

from kubedistill.runtime.data.alignment import Span, Turn, locate_turn, response_spans
from kubedistill.runtime.data.errors import ChatTemplateError, EarlierTurnsRerendered, RecordProblem

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, Any]
"""{role, content}, and for tool use `tool_calls` (assistant) or `tool_call_id`/`name` (tool), as chat
templates read them."""

MARKUP, CONTENT, SYSTEM_CONTENT = 0, 1, 2
"""What a prompt token is, for truncation (`Encoded.cut_rank`): chat markup (role headers, end-of-turn
tokens) is never cut; the content of the prompt's messages goes first, the system prompt's last."""


_NULL_CONTENT_TEST = re.compile(r"content(?:'\]|\"\])?\s+is\s+none\b")
"""A template that tells tool-call messages by their null content: `message['content'] is none`."""
_CONTEXT = 24
"""Characters shown either side of where two renders part."""
THOUGHT_OPEN, THOUGHT_CLOSE = "<think>", "</think>"
"""The reasoning block of DeepSeek-R1 and its distills, which Qwen3 took over."""


@dataclass(frozen=True)
class ChatFormat:
    """How chats are rendered besides their messages: `template`, spec.data.chatTemplate's text (None: the
    tokenizer's own), and `kwargs`, spec.data.chatTemplateKwargs (template variables such as Qwen3's
    `enable_thinking`, passed through transformers' `apply_chat_template`)."""

    template: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def source(self, tokenizer: "PreTrainedTokenizerBase") -> str:
        """The template's text."""
        return self.template or tokenizer.chat_template or ""


OWN_FORMAT = ChatFormat()
"""The tokenizer's own template, without variables."""


class TemplateRejection(ValueError):
    """The chat template raised on this chat (e.g. roles that do not alternate): the record is bad."""


@dataclass(frozen=True)
class Encoded:
    """Arrays, not lists: masks and truncation work on whole sequences at once (a record has thousands of
    tokens, and a real set millions of records)."""

    ids: npt.NDArray[np.int32]
    mask: npt.NDArray[np.bool_]
    spans: list[Span] | None = None
    """With `with_spans`: each target's span in the response text, in order."""
    cut_rank: npt.NDArray[np.int8] | None = None
    """Per token: `MARKUP`, `CONTENT` or `SYSTEM_CONTENT` (prompt tokens only; targets are `MARKUP`); None
    where not asked for (`cut_ranks`)."""

    @property
    def first_target(self) -> int:
        """Index of the first target token; the length when there is none."""
        return int(self.mask.argmax()) if self.mask.any() else len(self.mask)

    @property
    def num_targets(self) -> int:
        return int(self.mask.sum())


def encode_chat(
    tokenizer: "PreTrainedTokenizerBase",
    messages: Sequence[Message],
    *,
    first_response: int,
    add_generation_prompt: bool,
    with_spans: bool = False,
    tools: list[Any] | None = None,
    cut_ranks: bool = False,
    expand: Callable[[str], str] | None = None,
    chat_format: ChatFormat = OWN_FORMAT,
) -> Encoded:
    """The chat's tokens; targets are the assistant messages from index `first_response` on.

    Each target span covers the message's content (with its tool calls) and the end-of-turn token after it;
    the whitespace a template puts between turns is left out, because generation stops at the end-of-turn
    token and never produces it. `tools` (the functions a tool-using chat may call) go to the template.
    `cut_ranks` (for a prompt to be cut) finds the prompt's content, at two more renders per message.
    `expand` rewrites every render before it is tokenised (a vision-language chat: each image placeholder
    to the image's tokens); it must keep a prefix of the chat a prefix.
    """

    def render(part: Sequence[Message], generation_prompt: bool) -> str:
        text = render_chat(tokenizer, part, generation_prompt, tools, chat_format)
        return text if expand is None else expand(text)

    text = render(messages, add_generation_prompt)
    _check_tool_calls_rendered(messages, render, chat_format.source(tokenizer))
    spans = []
    turns: list[Turn] = []
    join = None
    for i in range(first_response, len(messages)):
        if messages[i]["role"] != "assistant":
            continue
        before = render(messages[:i], True)
        through = render(messages[: i + 1], False)
        opened = _thought_opened(before, through)
        if opened is None and not through.startswith(before):
            raise ChatTemplateError(
                f"the chat template renders assistant message {i} without the generation prompt it "
                f"renders before it ({before[-40:]!r} is not followed by the message); assistant tokens "
                "cannot be found with this template"
            )
        if not text.startswith(through):
            raise EarlierTurnsRerendered(
                f"the chat template renders messages 0..{i} differently once later turns follow "
                f"({_difference(through, text)}), so assistant tokens cannot be found in this chat; train "
                "it in parts (`trained_parts`)"
            )
        if opened is not None:
            if i < len(messages) - 1:
                raise EarlierTurnsRerendered(
                    f"the chat template's generation prompt opens a reasoning block "
                    f"({before[opened:]!r}) that assistant message {i} is rendered without, so it is trained "
                    "as the model writes it, which the later turns do not show; train it in parts "
                    "(`trained_parts`)"
                )
            written = before + _written_turn(through[opened:], messages[i])
            text, through, join = written + text[len(through) :], written, len(before)
        spans.append((len(before), max(len(before), len(through.rstrip()))))
        if with_spans and messages[i].get("tool_calls"):
            raise RecordProblem(
                f"assistant message {i} calls tools, and tool calls cannot be matched across tokenizers yet "
                "(cross-tokenizer distillation); use a teacher with the student's tokenizer for tool use"
            )
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
    contents = _prompt_contents(messages[:first_response], render) if cut_ranks else None
    return _encode_spans(
        tokenizer,
        text,
        spans,
        add_special_tokens=False,
        turns=turns if with_spans else None,
        contents=contents,
        join=join,
    )


def encode_plain(
    tokenizer: "PreTrainedTokenizerBase", prompt: str, response: str | None, with_spans: bool = False
) -> Encoded:
    """`prompt + response + eos` with the response and eos as targets; the prompt alone without a response.

    Special tokens (e.g. a BOS) are added as the tokenizer adds them to any text.
    """
    contents = [(0, len(prompt), CONTENT)]
    if response is None:
        return _encode_spans(
            tokenizer,
            prompt,
            [],
            add_special_tokens=True,
            turns=[] if with_spans else None,
            contents=contents,
        )
    text = prompt + response + tokenizer.eos_token
    end = len(prompt) + len(response)
    turns = [Turn(len(prompt), len(text), len(prompt), end, 0, len(response), 0)] if with_spans else None
    return _encode_spans(
        tokenizer, text, [(len(prompt), len(text))], add_special_tokens=True, turns=turns, contents=contents
    )


def trained_parts(
    tokenizer: "PreTrainedTokenizerBase",
    messages: Sequence[Message],
    first_response: int,
    tools: list[Any] | None = None,
    chat_format: ChatFormat = OWN_FORMAT,
) -> list[tuple[int, int]]:
    """(end, first) of each part a chat is trained in, the last part first: the chat cut to `messages[:end]`,
    whose assistant messages from index `first` on are targets. Together they train every assistant message
    from `first_response` on once, each in the longest part that renders it as the template renders it
    when it is generated (the chat cut after it): one part for a template that renders every turn the same
    whatever follows it, one per re-rendered turn otherwise (Qwen3's: one per question with reasoning)."""
    assistants = [i for i in range(first_response, len(messages)) if messages[i]["role"] == "assistant"]
    parts = []
    end = len(messages)
    while assistants:
        whole = render_chat(tokenizer, messages[:end], False, tools, chat_format)
        first = len(assistants)
        while first:
            at = assistants[first - 1]
            through = render_chat(tokenizer, messages[: at + 1], False, tools, chat_format)
            if not whole.startswith(through):
                break
            # A turn after a generation prompt that opens its reasoning is trained only where it ends the
            # chat (`encode_chat`).
            if at + 1 < end and _thought_opened(
                render_chat(tokenizer, messages[:at], True, tools, chat_format), through
            ):
                break
            first -= 1
        if first == len(assistants):
            # Messages after the last assistant message change how it renders: they have no targets.
            end = assistants[-1] + 1
            continue
        parts.append((end, assistants[first]))
        del assistants[first:]
        end = assistants[-1] + 1 if assistants else end
    return parts


def written_turn(
    tokenizer: "PreTrainedTokenizerBase",
    messages: Sequence[Message],
    tools: list[Any] | None = None,
    chat_format: ChatFormat = OWN_FORMAT,
) -> str | None:
    """The chat's last message, an assistant's, as `encode_chat` trains it after a generation prompt that
    opens a reasoning block the message is rendered without (DeepSeek-R1's); None where the template renders
    it after its generation prompt as it is."""
    before = render_chat(tokenizer, messages[:-1], True, tools, chat_format)
    through = render_chat(tokenizer, messages, False, tools, chat_format)
    opened = _thought_opened(before, through)
    return None if opened is None else _written_turn(through[opened:], messages[-1])


def render_chat(
    tokenizer: "PreTrainedTokenizerBase",
    messages: Sequence[Message],
    add_generation_prompt: bool,
    tools: list[Any] | None = None,
    chat_format: ChatFormat = OWN_FORMAT,
) -> str:
    settings = {"chat_template": chat_format.template, **chat_format.kwargs}
    try:
        try:
            return tokenizer.apply_chat_template(
                list(messages),
                tools=tools,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                **settings,
            )
        except TypeError:
            if not any(message.get("tool_calls") for message in messages):
                raise
        # Templates read a tool call's arguments as an object (transformers' documented form) or, like
        # DeepSeek-V3's, add them to text: the OpenAI form, JSON text.
        try:
            return tokenizer.apply_chat_template(
                _arguments_as_json(messages),
                tools=tools,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                **settings,
            )
        except TypeError as error:
            raise ChatTemplateError(
                f"the chat template fails on tool calls, with their arguments as an object and as JSON text "
                f"alike ({error}); use a template with tool support"
            ) from error
    except TemplateError as error:
        raise TemplateRejection(f"the chat template rejects the chat: {error}") from error


def _arguments_as_json(messages: Sequence[Message]) -> list[Message]:
    return [
        {
            **message,
            "tool_calls": [
                {
                    **call,
                    "function": {
                        **call["function"],
                        "arguments": json.dumps(call["function"]["arguments"], ensure_ascii=False),
                    },
                }
                for call in message["tool_calls"]
            ],
        }
        if message.get("tool_calls")
        else message
        for message in messages
    ]


Render = Callable[[Sequence[Message], bool], str]


def _thought_opened(before: str, through: str) -> int | None:
    """Where the generation prompt `before` opens a reasoning block that the assistant turn rendered after the
    same messages, `through`, lacks: the length of the prompt without its opener. None where the turn follows
    the prompt as it is, or the prompt does not end in an opened block.

    DeepSeek-R1's template ends its generation prompt `<｜Assistant｜><think>\\n` and renders the turn
    `<｜Assistant｜>` + answer (trl/chat_templates/deepseek_r1_distill.jinja, and its training variant):
    DeepSeek forces the opener because R1 models otherwise skip their reasoning (deepseek-ai/DeepSeek-R1
    README.md:195-196).
    """
    if through.startswith(before):
        return None
    opener = before.rstrip()
    if not opener.endswith(THOUGHT_OPEN):
        return None
    head = len(opener) - len(THOUGHT_OPEN)
    return head if through.startswith(before[:head]) else None


def _written_turn(rendered: str, message: Message) -> str:
    """What the model writes after a generation prompt that opened its reasoning block, from the turn as the
    template `rendered` it after the prompt without the opener: its thought, `</think>`, the answer and end of
    turn.

    The thought is the one the rendering holds (TRL's training variant renders content as it is, a thought
    inline in it included), else the message's `reasoning_content` (every record key for it arrives under
    this name, `messages.chat_messages`), else the one inline in its content that the template cut off
    (DeepSeek-R1's keeps what follows `</think>`); an inline thought is read as Qwen3's template reads it
    (trl/chat_templates/qwen3.jinja:38-40). It is written as R1 writes it and Qwen3's template renders it
    (qwen3.jinja:45): `thought\\n</think>\\n\\nanswer`. A message without one gets the empty thought, which
    follows the opener as `\\n</think>\\n\\n`: `<think>\\n\\n</think>` is how R1 models answer without
    reasoning (deepseek-ai/DeepSeek-R1 README.md:195), and a record without reasoning says the model answered
    so.
    """
    content, reasoning = message.get("content"), message.get("reasoning_content")
    if THOUGHT_CLOSE in rendered:
        thought = rendered.split(THOUGHT_CLOSE)[0].split(THOUGHT_OPEN)[-1]
    elif isinstance(reasoning, str):
        thought = reasoning
    elif isinstance(content, str) and THOUGHT_CLOSE in content:
        thought = content.split(THOUGHT_CLOSE)[0].split(THOUGHT_OPEN)[-1]
    else:
        thought = ""
    answer = rendered.split(THOUGHT_CLOSE)[-1]
    return thought.strip("\n") + "\n" + THOUGHT_CLOSE + "\n\n" + answer.lstrip("\n")


def _difference(alone: str, followed: str) -> str:
    """Where the chat rendered alone stops being a prefix of it rendered with later turns, as text a user can
    match against the template: gpt-oss's ends the last turn `<|return|>` and every earlier one `<|end|>`,
    Qwen3's gives the last turn an empty thinking block that earlier turns lose."""
    same = next(
        (i for i, (a, b) in enumerate(zip(alone, followed, strict=False)) if a != b),
        min(len(alone), len(followed)),
    )
    start = max(0, same - _CONTEXT)
    return (
        f"alone they read {alone[start : same + _CONTEXT]!r}, "
        f"followed by later turns {followed[start : same + _CONTEXT]!r}"
    )


def _check_tool_calls_rendered(messages: Sequence[Message], render: Render, template: str) -> None:
    """A template without tool support renders an assistant's tool calls as nothing: refuse it rather than
    train on the message's (often empty) text alone."""
    for i, message in enumerate(messages):
        if not message.get("tool_calls"):
            continue
        without = {key: value for key, value in message.items() if key != "tool_calls"}
        if render([*messages[:i], message], False) != render([*messages[:i], without], False):
            continue
        if not message["content"] and _NULL_CONTENT_TEST.search(template):
            # transformers drops every null key of a message before rendering (tokenization_utils_base's
            # `_normalize_chat_messages`), so such a template's tool-call branch is never reached.
            raise ChatTemplateError(
                f"the chat template renders tool calls only in a message whose content is null (it tests "
                f"`content is none`, as DeepSeek-R1's does), and transformers passes templates no null "
                f"content, so the tool_calls of message {i} would be lost; use a template that renders tool "
                "calls beside content (for DeepSeek models TRL's chat_templates/deepseekv3_training.jinja)"
            )
        raise ChatTemplateError(
            f"the chat template does not render the tool_calls of message {i}, so they would be lost; "
            "use a template with tool support (e.g. the model's own, if it was trained for tool use)"
        )


def _prompt_contents(prompt: Sequence[Message], render: Render) -> list[tuple[int, int, int]]:
    """(start, end, rank) of each prompt message's content in the rendered chat, where the template renders
    it as it is; the rest of the prompt is markup."""
    contents = []
    for j, message in enumerate(prompt):
        content = message.get("content") or ""
        if not content:
            continue
        try:
            before, through = (render(prompt[:j], False) if j else ""), render(prompt[: j + 1], False)
        except TemplateRejection:
            continue
        found = through.find(content, len(before)) if through.startswith(before) else -1
        if found >= 0:
            rank = SYSTEM_CONTENT if message["role"] == "system" else CONTENT
            contents.append((found, found + len(content), rank))
    return contents


def _encode_spans(
    tokenizer: "PreTrainedTokenizerBase",
    text: str,
    spans: list[tuple[int, int]],
    *,
    add_special_tokens: bool,
    turns: list[Turn] | None,
    contents: list[tuple[int, int, int]] | None,
    join: int | None = None,
) -> Encoded:
    """`join`: where a response after a prompt that opened its reasoning block starts, tokenised apart from
    the prompt as it is at generation, where the prompt is tokenised alone: whole, BPE would merge the
    prompt's `<think>\\n` with the empty thought's `\\n` (Qwen's tokenizers, which the R1 distills use, have
    a `\\n\\n` token)."""
    if join is None:
        ids, offsets = _tokens(tokenizer, text, add_special_tokens)
    else:
        (prompt_ids, prompt_offsets), (ids, offsets) = (
            _tokens(tokenizer, text[:join], add_special_tokens),
            _tokens(tokenizer, text[join:], False),
        )
        ids, offsets = np.concatenate([prompt_ids, ids]), np.concatenate([prompt_offsets, offsets + join])
    mask = _overlaps(offsets, spans)
    return Encoded(
        ids,
        mask,
        None if turns is None else response_spans(offsets.tolist(), mask.tolist(), turns),
        None if contents is None else _cut_ranks(offsets, mask, contents),
    )


def _tokens(
    tokenizer: "PreTrainedTokenizerBase", text: str, add_special_tokens: bool
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """The text's token ids and their character offsets [n, 2].

    Straight from the fast tokenizer's Rust core when transformers would pass the text on unchanged (no
    truncation or padding set on it): transformers' own call turns each encoding into Python dicts, which
    costs a third as much as tokenising."""
    backend = tokenizer.backend_tokenizer
    if backend.truncation is None and backend.padding is None:
        encoding = backend.encode(text, add_special_tokens=add_special_tokens)
        token_ids, token_offsets = encoding.ids, encoding.offsets
    else:
        encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        token_ids, token_offsets = encoded["input_ids"], encoded["offset_mapping"]
    count = len(token_ids)
    offsets = np.fromiter(itertools.chain.from_iterable(token_offsets), dtype=np.int64, count=2 * count)
    return np.array(token_ids, dtype=np.int32), offsets.reshape(count, 2)


def _cut_ranks(
    offsets: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_], contents: list[tuple[int, int, int]]
) -> npt.NDArray[np.int8]:
    """Per token, the rank of the content it lies wholly within (a token that straddles markup is markup).

    The contents ascend and do not overlap (each is found after the render of the messages before it), so
    the only one a token can lie within is the last that starts at or before it."""
    ranks = np.full(len(offsets), MARKUP, dtype=np.int8)
    if not contents:
        return ranks
    firsts, lasts, kinds = (np.array(column) for column in zip(*contents, strict=True))
    starts, ends = offsets[:, 0], offsets[:, 1]
    candidate = np.searchsorted(firsts, starts, side="right") - 1
    within = (candidate >= 0) & (ends <= lasts[candidate]) & ~mask & (starts < ends)
    ranks[within] = kinds[candidate[within]]
    return ranks


def _overlaps(offsets: npt.NDArray[np.int64], spans: list[tuple[int, int]]) -> npt.NDArray[np.bool_]:
    """Per token, whether its characters overlap one of the (sorted, disjoint) spans.

    Overlap rather than containment, so a token that straddles the boundary between prompt and response
    (possible in plain text, e.g. " 4") still trains the response. The only span a token can overlap
    first is the first that ends after the token starts.
    """
    if not spans:
        return np.zeros(len(offsets), dtype=np.bool_)
    span_starts, span_ends = (np.array(column) for column in zip(*spans, strict=True))
    first = np.searchsorted(span_ends, offsets[:, 0], side="right")
    inside = first < len(spans)
    mask = np.zeros(len(offsets), dtype=np.bool_)
    mask[inside] = span_starts[first[inside]] < offsets[inside, 1]
    return mask
