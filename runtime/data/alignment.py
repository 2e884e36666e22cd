"""Teacher and student with different tokenizers: where each side's target tokens sit in the response text,
which of them are predicted from the same text, and which vocabulary pieces both tokenizers share.

**Response text.** Each model sees the conversation through its own chat template, so the rendered texts
differ (markup, system prompts, the teacher's prompt under context distillation), but the assistant
messages' contents are the same characters. The response text is those contents in order, each followed by
two virtual characters: the turn's end (where both models predict their end-of-turn token) and a gap that
takes any markup after it. Message k starts at base_k = sum over earlier messages of (length + 2).

**Spans.** A target token's span is the part of the response text it covers, with the token owning the
characters from the previous token's end to its own end. Fast tokenizers may leave a word's leading space
out of its offsets ("trim_offsets"); owning the gap puts it back, so a token always starts right where the
text it is predicted from ends. A character split over several byte tokens ("é" as two byte-level
tokens) is owned by the first of them; the others cover nothing. Characters of the rendered text map as:
inside the content to their place in it, the content's end to the turn's end, anything after it to the gap,
anything before it (template markup) to the content's start.

**Alignment.** Position t's hidden state predicts target t from the text before the target's span start.
Student target i and teacher target j are predicted from the same response prefix when their spans start
at the same character and both cover something (`aligned_by_start`); they are the same piece of text when
their spans are equal and the tokens after both begin a new character (`aligned_exactly`). Where the two
tokenizations split a text differently (" purple" against " pur" "ple"), the shortest runs of tokens of both
sides that are the same text are its aligned groups (`aligned_groups`, TRL GOLD's).
"""

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from kubedistill.runtime.data.sample import Sample

Span = tuple[int, int]
"""[start, end) in the response text."""

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_METASPACE = "▁"


@dataclass(frozen=True)
class Turn:
    """One target message as a template rendered it: its target characters, where its content landed, and
    where it starts in the response text."""

    start: int
    """First target character in the rendered text (the content, or markup the template puts before it)."""
    end: int
    """End of its target characters (content and end-of-turn markup)."""
    content_start: int
    content_end: int
    lead: int
    """Leading characters of the content the template dropped (it trimmed the message)."""
    length: int
    """Characters of the message's content."""
    base: int
    """Where the message starts in the response text."""

    @property
    def next_base(self) -> int:
        return self.base + self.length + 2

    def coordinate(self, position: int) -> int:
        """Where a character boundary of the rendered text falls in the response text."""
        if position < self.content_end:
            return self.base + self.lead + max(0, position - self.content_start)
        if position == self.content_end:
            return self.base + self.length
        return self.base + self.length + 1


def locate_turn(text: str, start: int, end: int, content: str, base: int) -> Turn | None:
    """The turn whose target characters are `text[start:end]` and whose message content is `content`; None
    when the template changed the content beyond trimming it."""
    found = text.find(content, start, end) if content else start
    if found >= 0:
        return Turn(start, end, found, found + len(content), 0, len(content), base)
    trimmed = content.strip()
    found = text.find(trimmed, start, end) if trimmed else -1
    if found < 0:
        return None
    lead = len(content) - len(content.lstrip())
    return Turn(start, end, found, found + len(trimmed), lead, len(content), base)


def response_spans(
    offsets: Sequence[tuple[int, int]], mask: Sequence[bool], turns: Sequence[Turn]
) -> list[Span]:
    """The span of every target token (in order), from the tokenizer's character offsets of all tokens."""
    spans: list[Span] = []
    previous_end = offsets[0][0] if offsets else 0
    turn = 0
    for (start, end), target in zip(offsets, mask, strict=True):
        owned_from = min(previous_end, end)
        previous_end = max(previous_end, end)
        if not target:
            continue
        while turn < len(turns) - 1 and turns[turn].end <= start:
            turn += 1
        spans.append((turns[turn].coordinate(owned_from), turns[turn].coordinate(end)))
    return spans


def boundaries(spans: Sequence[Span]) -> list[bool]:
    """Per target, whether it starts a new character: it covers something."""
    return [start < end for start, end in spans]


def aligned_by_start(student: Sequence[Span], teacher: Sequence[Span]) -> list[tuple[int, int]]:
    """(student target, teacher target) pairs predicted from the same response prefix."""
    teacher_at = {span[0]: j for j, span in enumerate(teacher) if span[0] < span[1]}
    return [
        (i, teacher_at[span[0]])
        for i, span in enumerate(student)
        if span[0] < span[1] and span[0] in teacher_at
    ]


def aligned_exactly(student: Sequence[Span], teacher: Sequence[Span]) -> list[tuple[int, int]]:
    """(student target, teacher target) pairs that are the same text predicted from the same prefix."""
    teacher_at = {span: j for j, span in enumerate(teacher) if _whole(teacher, j)}
    return [
        (i, teacher_at[span]) for i, span in enumerate(student) if _whole(student, i) and span in teacher_at
    ]


Group = tuple[list[int], list[int]]
"""(student targets, teacher targets): consecutive tokens of each side that are the same text."""


def aligned_groups(student: Sequence[Span], teacher: Sequence[Span]) -> list[Group]:
    """The shortest runs of student and of teacher targets that are the same text predicted from the same
    prefix, in order: TRL GOLD's alignment groups (`ULDLoss._align_by_byte_offsets`,
    trl/experimental/gold/gold_trainer.py:530-553, which walks both sides' token ends and closes a group
    where they meet). A token is taken with the tokens after it that cover nothing (the rest of its last
    character's bytes). The groups of one token on each side are `aligned_exactly`'s pairs.

    GOLD walks one completion from its start; here a run must also start at the same character on both
    sides and cover the text without a gap (a turn's end), so text one side lacks (the other's truncation, a
    template's trimming) forms no group where GOLD would pair it as its trailing leftover."""
    student_units, teacher_units = _units(student), _units(teacher)
    teacher_at = {teacher[unit[0]][0]: k for k, unit in enumerate(teacher_units)}
    groups: list[Group] = []
    k = 0
    while k < len(student_units):
        start = student[student_units[k][0]][0]
        if start not in teacher_at:
            k += 1
            continue
        ends = _first_common_end(student, student_units, k, teacher, teacher_units, teacher_at[start])
        if ends is None:
            k += 1
            continue
        last, teacher_last = ends
        groups.append(
            (
                [i for unit in student_units[k : last + 1] for i in unit],
                [j for unit in teacher_units[teacher_at[start] : teacher_last + 1] for j in unit],
            )
        )
        k = last + 1
    return groups


def _units(spans: Sequence[Span]) -> list[list[int]]:
    """Targets as units: a token that covers something and the tokens after it that cover nothing."""
    units: list[list[int]] = []
    for i, (start, end) in enumerate(spans):
        if start < end:
            units.append([i])
        elif units:
            units[-1].append(i)
    return units


def _first_common_end(
    student: Sequence[Span],
    student_units: list[list[int]],
    k: int,
    teacher: Sequence[Span],
    teacher_units: list[list[int]],
    m: int,
) -> tuple[int, int] | None:
    """From units k and m (starting at the same character), the last units of each side up to the first end
    both reach, advancing the side that ends earlier (GOLD's walk); None at a gap or the end of either."""
    while True:
        student_end, teacher_end = student[student_units[k][0]][1], teacher[teacher_units[m][0]][1]
        if student_end == teacher_end:
            return k, m
        if student_end < teacher_end:
            k += 1
            if k == len(student_units) or student[student_units[k][0]][0] != student_end:
                return None
        else:
            m += 1
            if m == len(teacher_units) or teacher[teacher_units[m][0]][0] != teacher_end:
                return None


def aligned_positions(samples: "Sequence[Sample]", exactly: bool = False) -> tuple[list[int], list[int]]:
    """A micro-batch's aligned targets, as indices into its student loss positions and into the teacher's
    hidden states: both flat, in sample order then position order, as the student and the teacher lay them
    out."""
    student: list[int] = []
    teacher: list[int] = []
    student_offset = teacher_offset = 0
    for sample in samples:
        for i, j in sample.aligned_targets(exactly):
            student.append(student_offset + i)
            teacher.append(teacher_offset + j)
        student_offset += sample.num_targets
        teacher_offset += len(sample.teacher_loss_positions())
    return student, teacher


def merged_groups(samples: "Sequence[Sample]") -> list[Group]:
    """A micro-batch's aligned groups of more than one token on either side (`aligned_groups`), as indices
    laid out as `aligned_positions` lays out pairs; none where both sides share one tokenizer."""
    groups: list[Group] = []
    student_offset = teacher_offset = 0
    for sample in samples:
        if sample.target_spans is not None and sample.teacher_target_spans is not None:
            for student, teacher in aligned_groups(
                [(start, end) for start, end in sample.target_spans.tolist()],
                [(start, end) for start, end in sample.teacher_target_spans.tolist()],
            ):
                if len(student) > 1 or len(teacher) > 1:
                    groups.append(
                        ([student_offset + i for i in student], [teacher_offset + j for j in teacher])
                    )
        student_offset += sample.num_targets
        teacher_offset += len(sample.teacher_loss_positions())
    return groups


def _whole(spans: Sequence[Span], i: int) -> bool:
    """The token covers something and is not followed by more bytes of its last character."""
    start, end = spans[i]
    return start < end and (i + 1 == len(spans) or spans[i + 1][0] < spans[i + 1][1])


# -- vocabularies -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SharedVocabulary:
    """Token ids of the pieces both tokenizers have, pairwise: `student_ids[k]` and `teacher_ids[k]` stand for
    the same bytes (or the same added token, or are both tokenizers' end-of-sequence token)."""

    student_ids: tuple[int, ...]
    teacher_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.student_ids)


def shared_vocabulary(
    student: "PreTrainedTokenizerBase", teacher: "PreTrainedTokenizerBase"
) -> SharedVocabulary:
    """The pieces both tokenizers share, in the teacher's id order; computed once per job."""
    student_pieces, teacher_pieces = token_pieces(student), token_pieces(teacher)
    pairs = {teacher_pieces[piece]: student_pieces[piece] for piece in teacher_pieces.keys() & student_pieces}
    # Both models end a turn with their own end-of-sequence token, whatever its text: the same event.
    ends = (student.eos_token_id, teacher.eos_token_id)
    if None not in ends and ends[1] not in pairs and ends[0] not in pairs.values():
        pairs[ends[1]] = ends[0]
    teacher_ids = sorted(pairs)
    return SharedVocabulary(tuple(pairs[t] for t in teacher_ids), tuple(teacher_ids))


Piece = tuple[str, bytes]
"""("text", the bytes a token stands for) or ("added", an added token's content)."""


def token_pieces(tokenizer: "PreTrainedTokenizerBase") -> dict[Piece, int]:
    """What each token stands for, by the tokenizer's own encoding of text into pieces.

    Byte-level BPE (GPT-2, Qwen, Llama 3) spells bytes with printable stand-ins ("Ġ" is a space);
    SentencePiece (Llama 2, Mistral) writes a space as "▁" and unknown bytes as "<0xNN>". Decoding single
    tokens to strings instead would merge every partial UTF-8 byte into one replacement character. Pieces
    that two ids of one tokenizer both stand for are left out, except that a byte-fallback token yields
    to an ordinary token of the same byte.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder")
    byte_level = "ByteLevel" in _component_types(decoder)
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    added = {index: token.content for index, token in tokenizer.added_tokens_decoder.items()}
    ordinary: dict[Piece, list[int]] = {}
    fallback: dict[Piece, list[int]] = {}
    for token, index in tokenizer.get_vocab().items():
        if index in added:
            ordinary.setdefault(("added", added[index].encode()), []).append(index)
        elif byte_level:
            if all(char in byte_of for char in token):
                ordinary.setdefault(("text", bytes(byte_of[char] for char in token)), []).append(index)
        elif match := _BYTE_FALLBACK.fullmatch(token):
            fallback.setdefault(("text", bytes([int(match.group(1), 16)])), []).append(index)
        else:
            ordinary.setdefault(("text", token.replace(_METASPACE, " ").encode()), []).append(index)
    pieces = {piece: ids[0] for piece, ids in fallback.items() if len(ids) == 1}
    for piece, ids in ordinary.items():
        if len(ids) == 1:
            pieces[piece] = ids[0]
        else:
            pieces.pop(piece, None)
    return pieces


def _component_types(node: object) -> set[str]:
    """Every `type` in a tokenizers component's JSON (a `Sequence` nests its parts)."""
    if isinstance(node, dict):
        found = {node["type"]} if isinstance(node.get("type"), str) else set()
        for value in node.values():
            found |= _component_types(value)
        return found
    if isinstance(node, list):
        return set().union(*(_component_types(value) for value in node)) if node else set()
    return set()


def same_vocabulary(first: "PreTrainedTokenizerBase", second: "PreTrainedTokenizerBase") -> bool:
    return first is second or first.get_vocab() == second.get_vocab()
