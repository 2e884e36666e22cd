"""One training sequence with its loss mask, as the trainer, teacher and student consume it.

Sequences are numpy arrays (token ids int32, masks bool: 5 bytes a token), not tuples of Python ints (about
29 bytes a token on the driver), because a real training set holds 10^8-10^10 tokens. Whatever sequence a
caller hands in (a rollout's list, a test's tuple) is stored as such an array, read-only.
"""

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from kubedistill.runtime.data.alignment import Span, aligned_by_start, aligned_exactly

if TYPE_CHECKING:
    from kubedistill.runtime.data.images import ImageInputs


TokenIds = npt.NDArray[np.int32]
Mask = npt.NDArray[np.bool_]
Spans = npt.NDArray[np.int32]
"""[n, 2]: each target's (start, end) in the response text."""
TopIds = npt.NDArray[np.int32]
"""[targets, k]: a hosted teacher's k most likely next tokens at each target, in the student's ids; -1 where
the teacher named fewer than k, or nothing (the template's end-of-turn tokens after the sampled response)."""
TopLogprobs = npt.NDArray[np.float32]
"""[targets, k]: the teacher's log-probabilities of `TopIds` (any value where the id is -1)."""


@dataclass(frozen=True, slots=True, eq=False)
class Sample:
    """Token ids (prompt then response) and which of them are training targets.

    Position t's hidden state predicts token t + 1, so the loss is computed at the positions just before the
    targets. The first token can never be a target (nothing predicts it), which makes `num_targets` equal to
    the number of loss positions.
    """

    input_ids: TokenIds
    """Prompt and response, in the student's tokenizer."""
    target_mask: Mask
    """True where the token is a training target: assistant tokens incl. the end-of-turn token after them."""
    source: str
    """Where the record came from: `path:line` (jsonl, json) or `path:row N` (parquet)."""
    prompt_length: int
    """Tokens before the first target; on-policy, the whole sequence (the prompt to generate from)."""
    teacher_input_ids: TokenIds | None = None
    """Context distillation: what the teacher sees instead of `input_ids`; None means the same sequence."""
    teacher_target_mask: Mask | None = None
    """Targets within `teacher_input_ids`: the same response tokens, so as many as `target_mask` has (unless
    the teacher has its own tokenizer)."""
    target_spans: Spans | None = None
    """Teacher with its own tokenizer: each target's span in the response text (`data.alignment`)."""
    teacher_target_spans: Spans | None = None
    """Teacher with its own tokenizer: each teacher target's span in the same response text."""
    truncation: str | None = None
    """What fitting the record into spec.data.maxLength / promptMaxLength removed; None when nothing."""
    images: "ImageInputs | None" = None
    """A vision-language model's image inputs (pixels and patch grids) for the image tokens in `input_ids`,
    which teacher and student both see; None for text."""
    teacher_top_ids: TopIds | None = None
    """Sparse KD (spec.generation.topLogprobs): the hosted teacher's top-k at each target, in target order."""
    teacher_top_logprobs: TopLogprobs | None = None
    """Sparse KD: their log-probabilities."""
    group: int | None = None
    """Samples whose loss is one of their group's (a DPO pair, chosen then rejected; a GRPO prompt's answers)
    share an id: a step's batching keeps a group consecutive, whole and in order in one micro-batch
    (`data.batching.groups_of`). None: a sample on its own."""
    beta: float | None = None
    """A preference pair's own DPO beta (CogPO's, from its record), on both of its samples; None: the job's
    spec.preference.beta."""

    def __post_init__(self) -> None:
        for name, kind in SEQUENCES.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _frozen_array(value, kind, spans=name.endswith("spans")))
        _check_sequence(self.input_ids, self.target_mask, "")
        if not 0 <= self.prompt_length <= len(self.input_ids):
            raise ValueError(f"prompt_length {self.prompt_length} outside 0..{len(self.input_ids)}")
        if self.target_mask[: self.prompt_length].any():
            raise ValueError("a target lies within the prompt (before prompt_length)")
        if (
            self.images is not None
            and (self.target_mask & (self.input_ids == self.images.image_token_id)).any()
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
                (self.teacher_target_spans, int(self.teacher_target_mask.sum()), "teacher_"),
            ):
                if len(spans) != count:
                    raise ValueError(f"{prefix}target_spans has {len(spans)} spans for {count} targets")
        if (self.teacher_top_ids is None) != (self.teacher_top_logprobs is None):
            raise ValueError("teacher_top_ids and teacher_top_logprobs go together")
        if self.teacher_top_ids is not None and self.teacher_top_logprobs is not None:
            shape = self.teacher_top_ids.shape
            if len(shape) != 2 or shape[0] != self.num_targets or self.teacher_top_logprobs.shape != shape:
                raise ValueError(
                    f"teacher_top_ids {shape} and teacher_top_logprobs {self.teacher_top_logprobs.shape} "
                    f"must both be [{self.num_targets} targets, k]"
                )
        if self.teacher_input_ids is not None and self.teacher_target_mask is not None:
            _check_sequence(self.teacher_input_ids, self.teacher_target_mask, "teacher_")
            teacher_targets = int(self.teacher_target_mask.sum())
            if self.target_spans is None and teacher_targets != self.num_targets:
                raise ValueError(f"teacher has {teacher_targets} targets, the student {self.num_targets}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    __hash__ = None  # type: ignore[assignment]  # arrays are mutable in general, so samples are unhashable

    @property
    def num_targets(self) -> int:
        return int(self.target_mask.sum())

    @property
    def teacher_sequence(self) -> TokenIds:
        """What the teacher sees: `teacher_input_ids`, else the student's own sequence."""
        return self.input_ids if self.teacher_input_ids is None else self.teacher_input_ids

    def loss_positions(self) -> list[int]:
        return _loss_positions(self.target_mask)

    def labels(self) -> list[int]:
        return self.input_ids[1:][self.target_mask[1:]].tolist()

    def teacher_loss_positions(self) -> list[int]:
        """Loss positions within what the teacher sees (`teacher_input_ids`, else `input_ids`)."""
        if self.teacher_target_mask is None:
            return self.loss_positions()
        return _loss_positions(self.teacher_target_mask)

    def teacher_labels(self) -> list[int]:
        """The targets within what the teacher sees, in order."""
        if self.teacher_target_mask is None:
            return self.labels()
        return self.teacher_sequence[1:][self.teacher_target_mask[1:]].tolist()

    def aligned_targets(self, exactly: bool = False) -> list[tuple[int, int]]:
        """(student target, teacher target) index pairs predicted from the same response text (`exactly`: the
        same piece of it); with one tokenizer on both sides, every target with itself."""
        if self.target_spans is None or self.teacher_target_spans is None:
            return [(i, i) for i in range(self.num_targets)]
        align = aligned_exactly if exactly else aligned_by_start
        return align(_span_list(self.target_spans), _span_list(self.teacher_target_spans))


def packed(samples: Sequence[Sample]) -> list[Sample]:
    """The samples with each of their sequences a view into one array per field, so that a set of millions
    holds a few large buffers instead of millions of small ones (each with its header and its allocator's
    slack; small buffers freed while preparing leave holes the process keeps)."""
    columns: dict[str, npt.NDArray[Any]] = {}
    for name in SEQUENCES:
        parts = [getattr(sample, name) for sample in samples]
        present = [part for part in parts if part is not None]
        if present:
            columns[name] = np.concatenate(present)
    cursors = dict.fromkeys(columns, 0)
    result = []
    for sample in samples:
        views = {}
        for name, column in columns.items():
            part = getattr(sample, name)
            if part is not None:
                views[name] = column[cursors[name] : cursors[name] + len(part)]
                cursors[name] += len(part)
        result.append(replace(sample, **views))
    return result


SEQUENCES = {
    # The fields that hold sequences, and their element types.
    "input_ids": np.int32,
    "target_mask": np.bool_,
    "teacher_input_ids": np.int32,
    "teacher_target_mask": np.bool_,
    "target_spans": np.int32,
    "teacher_target_spans": np.int32,
    # [targets, k] each: concatenated and cut by rows like the 1-D sequences.
    "teacher_top_ids": np.int32,
    "teacher_top_logprobs": np.float32,
}


def _frozen_array(value: Any, kind: type, *, spans: bool) -> npt.NDArray[Any]:
    array = np.asarray(value)
    if array.dtype != kind:
        # Vocabularies and response texts stay far below 2^31, so int32 holds every id and offset.
        array = array.astype(kind)
    if spans:
        array = array.reshape(-1, 2)
    array.flags.writeable = False
    return array


def _same(first: Any, second: Any) -> bool:
    if isinstance(first, np.ndarray) or isinstance(second, np.ndarray):
        return (
            isinstance(first, np.ndarray)
            and isinstance(second, np.ndarray)
            and first.shape == second.shape
            and bool((first == second).all())
        )
    return bool(first == second)


def _span_list(spans: Spans) -> list[Span]:
    return [(start, end) for start, end in spans.tolist()]


def _loss_positions(mask: Mask) -> list[int]:
    return np.flatnonzero(mask[1:]).tolist()


def _check_sequence(ids: TokenIds, mask: Mask, prefix: str) -> None:
    if len(ids) != len(mask):
        raise ValueError(f"{prefix}input_ids has {len(ids)} tokens but {prefix}target_mask {len(mask)}")
    if len(ids) == 0:
        raise ValueError(f"{prefix}input_ids is empty")
    if mask[0]:
        raise ValueError(f"the first token of {prefix}input_ids cannot be a target: nothing predicts it")
