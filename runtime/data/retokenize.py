"""On-policy with a teacher that has its own tokenizer: the student's sampled response, tokenised again for
the teacher, with both sides' target spans in one response text (`data.alignment`), as off-policy data has
them.

**Student side.** The response's text is the bytes its tokens stand for (`alignment.token_pieces`: the
tokenizer's own pieces, not per-token decoding, which would turn each partial UTF-8 byte into a replacement
character). Special tokens (the stop token, markup) stand for no text. A token's span runs from the character
its first byte falls in to the character after its last byte's: a character split over several tokens is
owned by the first (spans (c, c+1), then (c+1, c+1)), as `alignment.response_spans` gives for off-policy
text, so the later tokens are never "whole" and never aligned. A response that ends with a special token
stopped: that token is the turn's end, span (L, L+1) for a text of L characters, where the teacher's
end-of-turn token sits too. A response cut inside a character (maxNewTokens or maxLength) or holding bytes
that are no UTF-8 ends its text before them; its tokens from there cover nothing.

**Teacher side.** The prompt keeps the tokens the teacher's own chat template gave it with its generation
prompt (built when the data was read). After it comes `lead + text + end`, tokenised on its own: `lead` and
`end` are what the teacher's template writes around an assistant message's content (Qwen3's empty
`<think></think>` block before it, `<|im_end|>` after it; found once by rendering a probe message, the
characters `encode_chat` takes as targets), `end` only for a response that stopped; plain-text data (no chat
template) ends with the teacher's eos as `encode_plain` writes it. Tokenising the response apart from the
prompt is GOLD's way (TRL `build_teacher_inputs_from_texts`, trl/experimental/gold/gold_trainer.py:174-251:
the prompt's ids, then the completion tokenised alone, then eos); it means no teacher token spans the
prompt/response join, where tokenising the whole text might merge the generation prompt's last characters
with the response's first (BPE merges across "\n" + "\n"): the teacher then reads a split it would not make
itself, at that one place. Every token of the part is a target, `lead`'s covering nothing (as off-policy).

What cannot be aligned is counted (`alignment_counts`): student targets without an exactly aligned teacher
target get the cross-entropy only, as in off-policy data.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from kubedistill.api.spec import DataSpec
from kubedistill.runtime.data.alignment import Span, Turn, response_spans, token_pieces
from kubedistill.runtime.data.chat import ChatFormat, render_chat
from kubedistill.runtime.data.errors import ChatTemplateError
from kubedistill.runtime.data.sample import Sample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from kubedistill.api.job import DistillationJob

_PROBE = "kubedistill probe response"


@dataclass(frozen=True)
class TeacherTurn:
    """What the teacher's template writes around an assistant message's content: the target characters
    before it (after the generation prompt) and after it (the end of the turn)."""

    lead: str
    end: str


def teacher_turn(
    tokenizer: "PreTrainedTokenizerBase", data: DataSpec, chat_format: ChatFormat
) -> TeacherTurn:
    if not data.apply_chat_template:
        return TeacherTurn("", tokenizer.eos_token or "")
    prompt = [{"role": "user", "content": "?"}]
    before = render_chat(tokenizer, prompt, True, None, chat_format)
    through = render_chat(
        tokenizer, [*prompt, {"role": "assistant", "content": _PROBE}], False, None, chat_format
    )
    at = through.find(_PROBE, len(before))
    if not through.startswith(before) or at < 0:
        raise ChatTemplateError(
            "the teacher's chat template does not render an assistant message as its generation prompt "
            "followed by the message's content, so a generated response cannot be placed after its prompt"
        )
    return TeacherTurn(through[len(before) : at], through[at + len(_PROBE) : len(through.rstrip())])


@dataclass(frozen=True)
class StudentResponse:
    text: str
    spans: list[Span]
    """Per response token, its span in `text` (the stop token's is (len(text), len(text) + 1))."""
    stopped: bool
    """The response ends with a special token: the turn's end."""


def student_response(response: Sequence[int], pieces: dict[int, bytes], special: set[int]) -> StudentResponse:
    """The text of a sampled response and its tokens' spans; `pieces` the bytes of every text token."""
    stopped = bool(response) and response[-1] in special
    body = response[:-1] if stopped else response
    chunks = [b"" if token in special else pieces.get(token, b"") for token in body]
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raw = raw[: error.start]
        text = raw.decode("utf-8")
    # Characters started before each byte boundary: a byte starts a character unless it is 0b10xxxxxx.
    starts = np.frombuffer(raw, dtype=np.uint8) & 0xC0 != 0x80
    before = np.concatenate([[0], np.cumsum(starts)])
    ends = np.minimum(np.cumsum([len(chunk) for chunk in chunks], dtype=np.int64), len(raw))
    spans, start = [], 0
    for end in ends.tolist():
        spans.append((int(before[min(start, len(raw))]), int(before[end])))
        start = end
    if stopped:
        spans.append((len(text), len(text) + 1))
    return StudentResponse(text, spans, stopped)


@dataclass(frozen=True)
class Retokenizer:
    """Completes a cross-tokenizer prompt sample with a sampled response for both models."""

    pieces: dict[int, bytes]
    special: frozenset[int]
    teacher: "PreTrainedTokenizerBase"
    turn: TeacherTurn

    @classmethod
    def build(
        cls,
        student: "PreTrainedTokenizerBase",
        teacher: "PreTrainedTokenizerBase",
        data: DataSpec,
        chat_format: ChatFormat,
    ) -> "Retokenizer":
        """`chat_format`: the teacher's (its own template, spec.data.chatTemplateKwargs)."""
        special = frozenset(student.all_special_ids)
        pieces = {token: piece for (_, piece), token in token_pieces(student).items() if token not in special}
        return cls(pieces, special, teacher, teacher_turn(teacher, data, chat_format))

    @classmethod
    def for_job(cls, job: "DistillationJob") -> "Retokenizer":
        from kubedistill.runtime.models.loading import load_tokenizer
        from kubedistill.runtime.models.roles import student_tokenizer_path, teacher_tokenizer_path

        teacher = teacher_tokenizer_path(job)
        assert teacher is not None, "a cross-tokenizer prompt has a teacher"
        data = job.spec.data
        # The teacher renders with its own template, as `SampleBuilder` has it do for the prompts.
        own = ChatFormat(None, dict(data.chat_template_kwargs))
        return cls.build(load_tokenizer(student_tokenizer_path(job)), load_tokenizer(teacher), data, own)

    def __call__(self, prompt: Sample, completed: Sample) -> Sample:
        """`completed`: the prompt with the response for the student (`with_response`); returns it with the
        teacher's prompt followed by its tokens of the same response, and both sides' spans."""
        assert prompt.teacher_input_ids is not None
        student = student_response(
            completed.input_ids[completed.prompt_length :].tolist(), self.pieces, set(self.special)
        )
        lead = self.turn.lead
        part = lead + student.text + (self.turn.end if student.stopped else "")
        encoding = self.teacher.backend_tokenizer.encode(part, add_special_tokens=False)
        turn = Turn(0, len(part), len(lead), len(lead) + len(student.text), 0, len(student.text), 0)
        teacher_spans = response_spans(encoding.offsets, [True] * len(encoding.ids), [turn])
        ids = np.concatenate([prompt.teacher_input_ids, np.asarray(encoding.ids, dtype=np.int32)])
        return replace(
            completed,
            teacher_input_ids=ids,
            teacher_target_mask=np.arange(len(ids)) >= len(prompt.teacher_input_ids),
            target_spans=student.spans,
            teacher_target_spans=teacher_spans,
        )


def alignment_counts(samples: Sequence[Sample]) -> tuple[int, int, int]:
    """(student targets exactly aligned with a teacher target, student targets, samples with none aligned)."""
    aligned = targets = none = 0
    for sample in samples:
        pairs = len(sample.aligned_targets(exactly=True))
        aligned += pairs
        targets += sample.num_targets
        none += pairs == 0
    return aligned, targets, none
