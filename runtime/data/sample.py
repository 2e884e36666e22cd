"""One training sequence with its loss mask, as the trainer, teacher and student consume it."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kubedistill.runtime.data.alignment import Span, aligned_by_start, aligned_exactly

if TYPE_CHECKING:
    from kubedistill.runtime.data.images import ImageInputs


@dataclass(frozen=True)
class Sample:
    """Token ids (prompt then response) and which of them are training targets.

    Position t's hidden state predicts token t + 1, so the loss is computed at the positions just before the
    targets. The first token can never be a target (nothing predicts it), which makes `num_targets` equal to
    the number of loss positions.
    """

    input_ids: tuple[int, ...]
    """Prompt and response, in the student's tokenizer."""
    target_mask: tuple[bool, ...]
    """True where the token is a training target: assistant tokens incl. the end-of-turn token after them."""
    source: str
    """Where the record came from: `path:line` (jsonl, json) or `path:row N` (parquet)."""
    prompt_length: int
    """Tokens before the first target; on-policy, the whole sequence (the prompt to generate from)."""
    teacher_input_ids: tuple[int, ...] | None = None
    """Context distillation: what the teacher sees instead of `input_ids`; None means the same sequence."""
    teacher_target_mask: tuple[bool, ...] | None = None
    """Targets within `teacher_input_ids`: the same response tokens, so as many as `target_mask` has (unless
    the teacher has its own tokenizer)."""
    target_spans: tuple[Span, ...] | None = None
    """Teacher with its own tokenizer: each target's span in the response text (`data.alignment`)."""
    teacher_target_spans: tuple[Span, ...] | None = None
    """Teacher with its own tokenizer: each teacher target's span in the same response text."""
    truncation: str | None = None
    """What fitting the record into spec.data.maxLength / promptMaxLength removed; None when nothing."""
    images: "ImageInputs | None" = None
    """A vision-language model's image inputs (pixels and patch grids) for the image tokens in `input_ids`,
    which teacher and student both see; None for text."""

    def __post_init__(self) -> None:
        _check_sequence(self.input_ids, self.target_mask, "")
        if not 0 <= self.prompt_length <= len(self.input_ids):
            raise ValueError(f"prompt_length {self.prompt_length} outside 0..{len(self.input_ids)}")
        if any(self.target_mask[: self.prompt_length]):
            raise ValueError("a target lies within the prompt (before prompt_length)")
        if self.images is not None and any(
            target and token == self.images.image_token_id
            for token, target in zip(self.input_ids, self.target_mask, strict=True)
        ):
            raise ValueError("an image token is a target; only the assistant's text is")
        if (self.teacher_input_ids is None) != (self.teacher_target_mask is None):
            raise ValueError("teacher_input_ids and teacher_target_mask go together")
        if (self.target_spans is None) != (self.teacher_target_spans is None):
            raise ValueError("target_spans and teacher_target_spans go together")
        if self.target_spans is not None and self.teacher_target_spans is not None:
            if self.teacher_target_mask is None:
                raise ValueError("target spans describe a teacher tokenization: teacher_input_ids is missing")
            for spans, count, prefix in (
                (self.target_spans, self.num_targets, ""),
                (self.teacher_target_spans, sum(self.teacher_target_mask), "teacher_"),
            ):
                if len(spans) != count:
                    raise ValueError(f"{prefix}target_spans has {len(spans)} spans for {count} targets")
        if self.teacher_input_ids is not None and self.teacher_target_mask is not None:
            _check_sequence(self.teacher_input_ids, self.teacher_target_mask, "teacher_")
            if self.target_spans is None and sum(self.teacher_target_mask) != self.num_targets:
                raise ValueError(
                    f"teacher has {sum(self.teacher_target_mask)} targets, the student {self.num_targets}"
                )

    @property
    def num_targets(self) -> int:
        return sum(self.target_mask)

    def loss_positions(self) -> list[int]:
        return _loss_positions(self.target_mask)

    def labels(self) -> list[int]:
        return [self.input_ids[t + 1] for t in self.loss_positions()]

    def teacher_loss_positions(self) -> list[int]:
        """Loss positions within what the teacher sees (`teacher_input_ids`, else `input_ids`)."""
        if self.teacher_target_mask is None:
            return self.loss_positions()
        return _loss_positions(self.teacher_target_mask)

    def teacher_labels(self) -> list[int]:
        """The targets within what the teacher sees, in order."""
        sequence = self.teacher_input_ids or self.input_ids
        return [sequence[t + 1] for t in self.teacher_loss_positions()]

    def aligned_targets(self, exactly: bool = False) -> list[tuple[int, int]]:
        """(student target, teacher target) index pairs predicted from the same response text (`exactly`: the
        same piece of it); with one tokenizer on both sides, every target with itself."""
        if self.target_spans is None or self.teacher_target_spans is None:
            return [(i, i) for i in range(self.num_targets)]
        align = aligned_exactly if exactly else aligned_by_start
        return align(self.target_spans, self.teacher_target_spans)


def _loss_positions(mask: tuple[bool, ...]) -> list[int]:
    return [t for t in range(len(mask) - 1) if mask[t + 1]]


def _check_sequence(ids: tuple[int, ...], mask: tuple[bool, ...], prefix: str) -> None:
    if len(ids) != len(mask):
        raise ValueError(f"{prefix}input_ids has {len(ids)} tokens but {prefix}target_mask {len(mask)}")
    if not ids:
        raise ValueError(f"{prefix}input_ids is empty")
    if mask[0]:
        raise ValueError(f"the first token of {prefix}input_ids cannot be a target: nothing predicts it")
