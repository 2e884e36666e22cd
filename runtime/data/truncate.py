"""Fitting a record into `spec.data.maxLength` and `promptMaxLength` without breaking its chat markup.

In this order, each step only when the record still does not fit:
1. A chat drops its earliest turns (a turn: a user message and what follows it up to the next one), keeping
   its leading system messages, until it fits; the latest turns are the ones the record is about.
2. A prompt (the tokens before the first target) longer than `promptMaxLength` loses tokens from its
   messages' content, earliest first, the system prompt's last; role headers and end-of-turn tokens stay.
3. A sequence longer than `maxLength` loses the end of its response, and never ends inside the markup of a
   later turn.

Each returns a note of what it removed, so that every shortened record is counted and named
(`Sample.truncation`).
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from kubedistill.api.spec import DataSpec
from kubedistill.runtime.data.chat import (
    CONTENT,
    OWN_FORMAT,
    SYSTEM_CONTENT,
    ChatFormat,
    Encoded,
    Message,
    render_chat,
    written_turn,
)
from kubedistill.runtime.data.errors import RecordProblem

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def fits(encoded: Encoded, data: DataSpec) -> bool:
    return encoded.first_target <= data.prompt_max_length and len(encoded.ids) <= data.max_length


def fit_turns(
    tokenizer: "PreTrainedTokenizerBase",
    messages: Sequence[Message],
    data: DataSpec,
    *,
    has_response: bool,
    tools: list[Any] | None,
    first_response: int = 0,
    chat_format: ChatFormat = OWN_FORMAT,
) -> tuple[list[Message], int, str] | None:
    """The chat without as few of its earliest turns as make it fit (or without all but its last turn with
    a target, when none do), where its first target now is, and a note saying what was dropped; None when
    it has no turn to drop. Targets stay those from `first_response` on (`trained_parts`, trainTurns)."""
    lead = next((i for i, message in enumerate(messages) if message["role"] != "system"), len(messages))
    best: tuple[list[Message], int] | None = None
    for start in (i for i in range(lead + 1, len(messages)) if messages[i]["role"] == "user"):
        kept = [*messages[:lead], *messages[start:]]
        first = _first_target(kept, lead + max(first_response - start, 0), has_response)
        if first is None:
            break
        best = kept, first
        prompt, total = _lengths(tokenizer, kept, first, has_response, tools, chat_format)
        if prompt <= data.prompt_max_length and total <= data.max_length:
            break
    if best is None:
        return None
    kept, first = best
    dropped = len(messages) - len(kept)
    after = " after the system prompt" if lead else ""
    return kept, first, f"dropped its {dropped} earliest messages of {len(messages)} (whole turns{after})"


def _first_target(messages: Sequence[Message], lead: int, has_response: bool) -> int | None:
    if not has_response:
        return len(messages)
    return next((i for i in range(lead, len(messages)) if messages[i]["role"] == "assistant"), None)


def _lengths(
    tokenizer: "PreTrainedTokenizerBase",
    messages: Sequence[Message],
    first: int,
    has_response: bool,
    tools: list[Any] | None,
    chat_format: ChatFormat,
) -> tuple[int, int]:
    """Tokens of the prompt and of the whole chat (counted apart: a little off at the seam, which only
    makes the later steps cut a token or two)."""

    def count(part: Sequence[Message], generation_prompt: bool) -> int:
        text = render_chat(tokenizer, part, generation_prompt, tools, chat_format)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    total = count(messages, not has_response)
    if has_response and messages[-1]["role"] == "assistant":
        written = written_turn(tokenizer, messages, tools, chat_format)
        if written is not None:
            # DeepSeek-R1's: the last answer is trained as the model writes it after the generation prompt,
            # its thought included, which the chat's own rendering cuts (`encode_chat`). Measured without
            # it, a long thought would seem to fit and the response be cut instead of the earliest turns.
            total = count(messages[:-1], True) + len(
                tokenizer(written, add_special_tokens=False)["input_ids"]
            )
    return (count(messages[:first], True) if has_response else total), total


def truncate(encoded: Encoded, data: DataSpec) -> tuple[Encoded, str | None]:
    """Steps 2 and 3: the record cut to the limits, and a note of what went."""
    keep, note = _cut_prompt(encoded, data.prompt_max_length)
    if encoded.num_targets == 0:
        return _select(encoded, keep), note
    prompt_length = int(np.count_nonzero(keep < encoded.first_target))
    if prompt_length == 0:
        raise RecordProblem("the response starts at the first token; a prompt must come before it")
    if prompt_length >= data.max_length:
        raise RecordProblem(
            f"the prompt alone has {prompt_length} tokens after cutting to promptMaxLength "
            f"{data.prompt_max_length}, leaving no room for the response within maxLength {data.max_length}"
        )
    if len(keep) <= data.max_length:
        return _select(encoded, keep), note
    end = data.max_length
    while not encoded.mask[keep[end - 1]]:
        end -= 1
    cut = _select(encoded, keep[:end])
    lost = encoded.num_targets - cut.num_targets
    notes = [
        note,
        f"cut {lost} of its {encoded.num_targets} response tokens to fit maxLength {data.max_length}",
    ]
    return cut, "; ".join(each for each in notes if each)


def truncate_teacher(teacher: Encoded, kept_targets: int, data: DataSpec) -> Encoded:
    """The teacher's prompt cut like the student's; its response cut to the student's `kept_targets`."""
    keep, _ = _cut_prompt(teacher, data.prompt_max_length)
    if teacher.num_targets == 0:
        return _select(teacher, keep)
    if not (keep < teacher.first_target).any():
        raise RecordProblem("the teacher's response starts at its first token; a prompt must come before it")
    if kept_targets < teacher.num_targets:
        last = np.flatnonzero(teacher.mask)[kept_targets - 1]
        keep = keep[keep <= last]
    return _select(teacher, keep)


Indices = npt.NDArray[np.intp]


def _cut_prompt(encoded: Encoded, prompt_max_length: int) -> tuple[Indices, str | None]:
    """The token indices to keep (ascending) once the prompt's content lost enough tokens, earliest first."""
    excess = encoded.first_target - prompt_max_length
    every = np.arange(len(encoded.ids))
    if excess <= 0:
        return every, None
    ranks = encoded.cut_rank if encoded.cut_rank is not None else np.zeros(len(encoded.ids), dtype=np.int8)
    prompt = ranks[: encoded.first_target]
    order = np.concatenate([np.flatnonzero(prompt == CONTENT), np.flatnonzero(prompt == SYSTEM_CONTENT)])
    if len(order) < excess:
        raise RecordProblem(
            f"the prompt has {encoded.first_target} tokens, and cutting all {len(order)} of its messages' "
            f"content cannot bring it to promptMaxLength {prompt_max_length} (the chat markup stays)"
        )
    removed = order[:excess]
    note = (
        f"cut {excess} of its {encoded.first_target} prompt tokens to fit promptMaxLength {prompt_max_length}"
    )
    if (ranks[removed] == SYSTEM_CONTENT).any():
        note += ", the system prompt's among them"
    return np.delete(every, removed), note


def _select(encoded: Encoded, keep: Indices) -> Encoded:
    """The tokens at `keep` (ascending); only prompt tokens and a tail of targets may be left out."""
    mask = encoded.mask[keep]
    spans = None if encoded.spans is None else encoded.spans[: int(mask.sum())]
    ranks = None if encoded.cut_rank is None else encoded.cut_rank[keep]
    return Encoded(encoded.ids[keep], mask, spans, ranks)
