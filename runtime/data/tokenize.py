"""One record -> one `Sample`: reading the keys the spec names, tokenising, truncating.

What a record holds, by `spec.data.<source>`:
- chats (`inputKey`, a list of messages in the OpenAI chat format, `data.messages`; a record's `tools`
  go to the chat template): every assistant message from the first one on is a target, its tool calls
  included, or with `trainTurns: last` only the last; on-policy, the chat without a trailing assistant
  message is the prompt. A template that renders earlier turns otherwise once later ones follow (Qwen3's)
  makes one sample per such turn, each the chat cut after it (`chat.trained_parts`).
- prompt/response (`promptKey`, `responseKey`): with `applyChatTemplate` a user and an assistant message,
  otherwise plain text `prompt + response + eos`.
- `teacherInputKey` (context distillation): the teacher's prompt (a string is a user message, a list is
  messages), followed by the same response as the student's.

A teacher with its own tokenizer (`cross_tokenizer`, for the cross-tokenizer algorithms) gets the same
conversation (or its `teacherInputKey` prompt with the same response) through its own chat template and
tokenizer, and both sides' targets carry their spans in the response text (`data.alignment`).

Chats with images (a vision-language model, `data.images`) render each image as its placeholder, which
becomes the image's tokens; the sample carries the image inputs (`Sample.images`). Their prompt is never cut
(an image's tokens must stay whole), only their response's end.

Truncation (`data.truncate`) keeps the chat markup whole and says what it removed (`Sample.truncation`).
The teacher sees the student's fitted chat; its prompt is cut to `promptMaxLength` the same way, and its
response to the student's targets (with its own tokenizer: to the targets that start within the text the
student's kept targets cover).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kubedistill.api.job import SpecError
from kubedistill.api.spec import DataSource, DataSpec, Mode, TrainTurns
from kubedistill.runtime.data.chat import (
    OWN_FORMAT,
    ChatFormat,
    Encoded,
    Message,
    TemplateRejection,
    encode_chat,
    encode_plain,
    trained_parts,
)
from kubedistill.runtime.data.errors import (
    BadRecord,
    BadRecordError,
    ChatTemplateError,
    EarlierTurnsRerendered,
    RecordProblem,
)
from kubedistill.runtime.data.images import (
    IMAGE_TOKEN,
    ImageInTextJob,
    ImageProcessing,
    expand_placeholders,
)
from kubedistill.runtime.data.messages import chat_messages, has_images, unicode_text
from kubedistill.runtime.data.preference import pair_beta, pair_messages
from kubedistill.runtime.data.reasoning import UnrenderedReasoning
from kubedistill.runtime.data.records import Record, json_type
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.data.truncate import fit_turns, fits, truncate, truncate_teacher

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class _Exchange:
    """A prompt and (for training) the response after it, before tokenisation.

    Chats keep the response as messages from index `first_response` on; plain text keeps both as strings.
    """

    messages: Sequence[Message] | None = None
    first_response: int = 0
    prompt: str = ""
    response: str | None = None
    tools: list[Any] | None = None
    """The functions a tool-using chat may call (the record's `tools`), for the chat template."""

    @property
    def has_response(self) -> bool:
        return self.first_response < len(self.messages) if self.messages is not None else bool(self.response)


@dataclass(frozen=True)
class SampleBuilder:
    """Turns records of one data source into samples for one mode; `field` is the source's spec path."""

    source: DataSource
    data: DataSpec
    tokenizer: "PreTrainedTokenizerBase"
    mode: Mode
    teacher_tokenizer: "PreTrainedTokenizerBase"
    field: str = "spec.data.train"
    cross_tokenizer: bool = False
    """The teacher has its own tokenizer: every sample carries the teacher's tokenization and target spans."""
    images: ImageProcessing | None = None
    """The student reads images (a vision-language model); None: a text model, which refuses them."""
    teacher_images: ImageProcessing | None = None
    """The teacher's own image processor, checked to read every image as the student's does; None: the
    student's."""
    reasoning: UnrenderedReasoning | None = None
    """Counts the records whose assistant reasoning the student's template leaves out; None: unchecked."""
    sparse_targets: bool = False
    """Sparse KD: each sample carries its record's `teacherLogprobs` (spec.generation.topLogprobs)."""

    def __post_init__(self) -> None:
        self._check_config()

    def __call__(self, record: Record) -> Sample:
        """The sample of a record that makes one (a chat its template renders the same whatever follows)."""
        (sample,) = self.samples(record)
        return sample

    def samples(self, record: Record) -> list[Sample]:
        """The samples of one record: one, or one per part of a chat (`chat.trained_parts`); a malformed
        record raises `BadRecordError` naming its source."""
        try:
            return self._build(record)
        except ImageInTextJob as problem:
            model = f" ({self.tokenizer.name_or_path})" if self.tokenizer.name_or_path else ""
            raise SpecError(
                self.field,
                f"{record.source} has an image ({problem}), but spec.student.model{model} has no image "
                "processor (preprocessor_config.json); use a vision-language student, or data without images",
            ) from problem
        except (RecordProblem, TemplateRejection) as problem:
            raise BadRecordError(BadRecord(record.source, str(problem))) from problem
        except ChatTemplateError as error:
            raise ChatTemplateError(f"{record.source}: {error}") from error

    @property
    def _on_policy(self) -> bool:
        return self.mode == Mode.ON_POLICY

    @cached_property
    def chat_format(self) -> ChatFormat:
        """The student's (read once, before the builder goes to worker processes)."""
        return student_chat_format(self.data)

    @property
    def _teacher_format(self) -> ChatFormat:
        """A teacher with its own tokenizer renders with its own template; one that reads the student's
        tokens, with the student's."""
        return ChatFormat(None, self.chat_format.kwargs) if self.cross_tokenizer else self.chat_format

    def _check_config(self) -> None:
        """Settings that would make every record fail, reported once and naming the field to change."""
        source, data, tokenizer, field = self.source, self.data, self.tokenizer, self.field
        for each in (tokenizer, self.teacher_tokenizer):
            if not each.is_fast:
                raise ValueError(f"{type(each).__name__} is a slow tokenizer; token offsets need a fast one")
        chats = source.prompt_key is None
        if chats and not data.apply_chat_template:
            raise SpecError(
                "spec.data.applyChatTemplate",
                "chat records need the chat template; set it to true, or set "
                f"{field}.promptKey and {field}.responseKey for plain prompt/response records",
            )
        if data.apply_chat_template and not self.chat_format.source(tokenizer):
            raise SpecError(
                "spec.data.applyChatTemplate",
                "the tokenizer has no chat template; set it to false and use "
                f"{field}.promptKey and {field}.responseKey",
            )
        if self.cross_tokenizer and data.apply_chat_template and not self.teacher_tokenizer.chat_template:
            raise SpecError(
                "spec.teacher.tokenizer",
                "the teacher's tokenizer has no chat template, and "
                "spec.data.applyChatTemplate renders each model's chats with its own; give the teacher a "
                "tokenizer with one, or set applyChatTemplate to false",
            )
        if not chats and source.response_key is None and not self._on_policy:
            raise SpecError(f"{field}.responseKey", "required with promptKey unless spec.mode is onPolicy")
        if not data.apply_chat_template and tokenizer.eos_token is None:
            raise SpecError(
                "spec.data.applyChatTemplate",
                "plain text ends with the tokenizer's eos token, and it has none",
            )

    def _build(self, record: Record) -> list[Sample]:
        if self.mode == Mode.PREFERENCE:
            return self._pair(record)
        exchange = self._student_exchange(record.fields, self._image_folder(record))
        if exchange.messages is None:
            return [self._build_part(record, exchange)]
        parts = [(len(exchange.messages), exchange.first_response)]
        try:
            samples = [self._build_part(record, exchange)]
        except EarlierTurnsRerendered:
            parts = trained_parts(
                self.tokenizer, exchange.messages, exchange.first_response, exchange.tools, self.chat_format
            )
            if len(parts) == 1:
                raise
            samples = [
                self._build_part(
                    record, replace(exchange, messages=exchange.messages[:end], first_response=first)
                )
                for end, first in reversed(parts)
            ]
        if self.reasoning is not None and self.source.prompt_key is None:
            self.reasoning.check(
                self.tokenizer,
                record.source,
                record.fields[self.source.input_key],
                exchange.messages,
                parts,
                exchange.tools,
                self.chat_format,
            )
        if self.sparse_targets:
            return [self._with_sparse_targets(record, samples)]
        return samples

    def _pair(self, record: Record) -> list[Sample]:
        """A preference pair's two samples, chosen then rejected, each its prompt and answer fitted and cut
        to the limits as any chat is (`data.preference`), with the pair's own beta where it gives one (CogPO);
        a pair with an answer that cannot fit is bad."""
        prompt, *answers = pair_messages(record.fields)
        beta = pair_beta(record.fields)
        tools = _tools(record.fields)
        return [
            replace(
                self._build_part(
                    record, _Exchange(messages=[*prompt, *answer], first_response=len(prompt), tools=tools)
                ),
                beta=beta,
            )
            for answer in answers
        ]

    def _with_sparse_targets(self, record: Record, samples: list[Sample]) -> Sample:
        """The record's one sample with the teacher's top-k at each target. The targets must begin with the
        tokens the teacher sampled (`teacherLogprobs.ids`), else the log-probabilities belong to other
        positions; the targets after them (the template's end of turn) get none, and a cut response keeps
        those of its kept tokens."""
        logprobs = record.fields.get("teacherLogprobs")
        if not isinstance(logprobs, Mapping):
            raise RecordProblem(
                "has no teacherLogprobs, which spec.distillation.algorithm sparseKd trains on; generate the "
                "file with spec.generation.topLogprobs"
            )
        if len(samples) != 1:
            raise RecordProblem(
                f"the chat template renders it as {len(samples)} trained parts; sparse KD's "
                "teacherLogprobs belong to one response"
            )
        (sample,) = samples
        targets = sample.input_ids[1:][sample.target_mask[1:]]
        sampled = np.asarray(logprobs["ids"], dtype=np.int64)
        shared = min(len(targets), len(sampled))
        differ = np.flatnonzero(targets[:shared] != sampled[:shared])
        if len(differ) or (len(targets) < len(sampled) and sample.truncation is None):
            at = int(differ[0]) if len(differ) else len(targets)
            rendered = self.tokenizer.decode(targets[at : at + 8].tolist())
            teacher = self.tokenizer.decode(sampled[at : at + 8].tolist())
            raise RecordProblem(
                f"the chat template renders the response otherwise than the teacher sampled it "
                f"(teacherLogprobs.ids), from response token {at}: {rendered!r} instead of {teacher!r}; "
                "sparse KD needs the sampled tokens as the targets (e.g. a template that renders reasoning "
                "its own way: set spec.generation.keepReasoning false, or a template that renders it as "
                "sampled)"
            )
        top_ids, top_logprobs = logprobs["topIds"], logprobs["topLogprobs"]
        k = max((len(row) for row in top_ids), default=0)
        ids = np.full((len(targets), k), -1, dtype=np.int32)
        values = np.zeros((len(targets), k), dtype=np.float32)
        for position, (row, row_values) in enumerate(
            zip(top_ids[:shared], top_logprobs[:shared], strict=True)
        ):
            ids[position, : len(row)] = row
            values[position, : len(row)] = row_values
        return replace(sample, teacher_top_ids=ids, teacher_top_logprobs=values)

    def _build_part(self, record: Record, exchange: _Exchange) -> Sample:
        """The sample of the exchange, a record's chat or a part of it."""
        if exchange.messages is not None and any(has_images(message) for message in exchange.messages):
            return self._with_images(record, exchange)
        student, untruncated, dropped = self._fitted_student(exchange)
        encoded, cut = truncate(untruncated, self.data)
        sample = Sample(
            input_ids=encoded.ids,
            target_mask=encoded.mask,
            source=record.source,
            prompt_length=len(encoded.ids) if self._on_policy else encoded.first_target,
            truncation="; ".join(note for note in (dropped, cut) if note) or None,
        )
        if self.cross_tokenizer:
            return self._with_own_teacher_tokens(sample, record, student, untruncated, encoded)
        if self.source.teacher_input_key is None:
            return sample
        teacher = _encode(
            self.teacher_tokenizer,
            self._teacher_exchange(record.fields, student),
            self.data,
            chat_format=self._teacher_format,
        )
        if teacher.num_targets != untruncated.num_targets:
            raise RecordProblem(
                f"the teacher sees {teacher.num_targets} response tokens, "
                f"the student {untruncated.num_targets}"
            )
        teacher = truncate_teacher(teacher, encoded.num_targets, self.data)
        if self.teacher_tokenizer is self.tokenizer and _targets(teacher) != _targets(encoded):
            raise RecordProblem("the teacher's response tokens differ from the student's")
        return replace(sample, teacher_input_ids=teacher.ids, teacher_target_mask=teacher.mask)

    def _fitted_student(self, student: _Exchange) -> tuple[_Exchange, Encoded, str | None]:
        """The student's exchange, encoded; a chat too long for the limits without its earliest turns."""
        encoded = _encode(self.tokenizer, student, self.data, self.cross_tokenizer, self.chat_format)
        if student.messages is None or fits(encoded, self.data):
            return student, encoded, None
        fitted = fit_turns(
            self.tokenizer,
            student.messages,
            self.data,
            has_response=student.has_response,
            tools=student.tools,
            first_response=student.first_response,
            chat_format=self.chat_format,
        )
        if fitted is None:
            return student, encoded, None
        messages, first_response, note = fitted
        student = replace(student, messages=messages, first_response=first_response)
        return (
            student,
            _encode(self.tokenizer, student, self.data, self.cross_tokenizer, self.chat_format),
            note,
        )

    def _with_own_teacher_tokens(
        self, sample: Sample, record: Record, student: _Exchange, untruncated: Encoded, encoded: Encoded
    ) -> Sample:
        exchange = student
        if self.source.teacher_input_key is not None:
            exchange = self._teacher_exchange(record.fields, student)
        teacher = _encode(
            self.teacher_tokenizer, exchange, self.data, with_spans=True, chat_format=self._teacher_format
        )
        kept = teacher.num_targets
        if encoded.num_targets < untruncated.num_targets:
            covered = encoded.spans[-1][1]
            kept = max(1, sum(start < covered for start, _ in teacher.spans))
        teacher = truncate_teacher(teacher, kept, self.data)
        return replace(
            sample,
            teacher_input_ids=teacher.ids,
            teacher_target_mask=teacher.mask,
            target_spans=encoded.spans,
            teacher_target_spans=teacher.spans,
        )

    def _image_folder(self, record: Record) -> Path | None:
        """Where the record's relative image paths start: its data file's folder (the source is `path:line`
        or `path:row N`), or for a saved dataset (`path[split]:row N`) its folder; None for a text model."""
        if self.images is None:
            return None
        file = Path(record.source.rsplit(":", 1)[0])
        return file.parent if file.is_file() else Path(self.source.path)

    def _with_images(self, record: Record, exchange: _Exchange) -> Sample:
        """The sample of a chat with images: its placeholders expanded to the images' tokens."""
        if self.cross_tokenizer or self.source.teacher_input_key is not None:
            what = (
                "a teacher with its own tokenizer"
                if self.cross_tokenizer
                else f"{self.field}.teacherInputKey"
            )
            raise SpecError(
                self.field,
                f"{record.source} has images, and {what} is not supported with images yet; use a teacher "
                "with the student's tokenizer and no teacherInputKey",
            )
        assert self.images is not None and exchange.messages is not None
        images = [
            part["image"]
            for message in exchange.messages
            if has_images(message)
            for part in message["content"]
            if part["type"] == "image"
        ]
        inputs, counts = self.images.process(images)
        if self.teacher_images is not None and self.teacher_images.process(images)[0] != inputs:
            raise SpecError(
                "spec.teacher.model",
                f"{record.source}: the teacher's image processor ({self.teacher_images.model}) turns the "
                f"images into other pixels or patch grids than the student's ({self.images.model}); teacher "
                "and student see one sequence, so they must read images alike (the same "
                "preprocessor_config.json)",
            )
        try:
            encoded = encode_chat(
                self.tokenizer,
                exchange.messages,
                first_response=exchange.first_response,
                add_generation_prompt=not exchange.has_response,
                tools=exchange.tools,
                expand=lambda text: expand_placeholders(text, counts),
                chat_format=self.chat_format,
            )
        except TypeError as error:
            # A text model's template adds the content to a string, which a list of parts cannot be.
            raise ChatTemplateError(
                f"the chat template cannot render a message made of parts ({error}); use the model's own "
                "image-aware chat template"
            ) from error
        image_tokens = sum(counts)
        if np.count_nonzero(encoded.ids == self.images.image_token_id) != image_tokens:
            raise ChatTemplateError(
                f"the chat template renders fewer {IMAGE_TOKEN} placeholders than the chat has images "
                f"({len(images)}); use the model's own image-aware chat template"
            )
        if encoded.first_target > self.data.prompt_max_length:
            raise RecordProblem(
                f"the prompt has {encoded.first_target} tokens ({image_tokens} of them its images'), over "
                f"promptMaxLength {self.data.prompt_max_length}; a prompt with images is not cut"
            )
        cut, note = truncate(encoded, self.data)
        if np.count_nonzero(cut.ids == self.images.image_token_id) != image_tokens:
            raise RecordProblem(
                f"fitting maxLength {self.data.max_length} would cut into a later turn's images; "
                "raise maxLength or split the chat"
            )
        return Sample(
            input_ids=cut.ids,
            target_mask=cut.mask,
            source=record.source,
            prompt_length=len(cut.ids) if self._on_policy else cut.first_target,
            truncation=note,
            images=inputs,
        )

    def _student_exchange(self, fields: Mapping[str, Any], image_folder: Path | None = None) -> _Exchange:
        source, field = self.source, self.field
        if source.prompt_key is None:
            messages = chat_messages(
                _value(fields, source.input_key, f"{field}.inputKey"), source.input_key, image_folder
            )
            tools = _tools(fields)
            assistants = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
            if self._on_policy:
                ends_with_response = bool(assistants) and assistants[-1] == len(messages) - 1
                prompt = messages[:-1] if ends_with_response else messages
                if not prompt:
                    raise RecordProblem(f"{source.input_key!r} holds no prompt before its assistant message")
                return _Exchange(messages=prompt, first_response=len(prompt), tools=tools)
            if not assistants:
                raise RecordProblem(f"{source.input_key!r} has no assistant message to train on")
            for i in assistants:
                if not messages[i]["content"].strip() and not messages[i].get("tool_calls"):
                    raise RecordProblem(f"{source.input_key!r}: assistant message {i} is empty")
            first = assistants[-1] if self.data.train_turns == TrainTurns.LAST else assistants[0]
            return _Exchange(messages=messages, first_response=first, tools=tools)
        prompt = _text(fields, source.prompt_key, f"{field}.promptKey")
        response = None
        if source.response_key is not None and not self._on_policy:
            response = _text(fields, source.response_key, f"{field}.responseKey")
        return _exchange_from_text(prompt, response, self.data)

    def _teacher_exchange(self, fields: Mapping[str, Any], student: _Exchange) -> _Exchange:
        key = self.source.teacher_input_key
        value = _value(fields, key, f"{self.field}.teacherInputKey")
        if not self.data.apply_chat_template:
            if not isinstance(value, str):
                raise RecordProblem(
                    f"{key!r} must be a string when spec.data.applyChatTemplate is false, "
                    f"got {json_type(value)}"
                )
            return _Exchange(prompt=_nonblank(value, key), response=student.response)
        if isinstance(value, str):
            prompt = [{"role": "user", "content": _nonblank(value, key)}]
        else:
            prompt = chat_messages(value, key)
        response = list(student.messages[student.first_response :])
        return _Exchange(messages=[*prompt, *response], first_response=len(prompt), tools=student.tools)


def _exchange_from_text(prompt: str, response: str | None, data: DataSpec) -> _Exchange:
    if not data.apply_chat_template:
        return _Exchange(prompt=prompt, response=response)
    messages = [{"role": "user", "content": prompt}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return _Exchange(messages=messages, first_response=1)


def student_chat_format(data: DataSpec) -> ChatFormat:
    """How the student's chats are rendered: spec.data.chatTemplate's text and chatTemplateKwargs."""
    template = None
    if data.chat_template is not None:
        try:
            template = Path(data.chat_template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise SpecError(
                "spec.data.chatTemplate", f"cannot read the chat template file: {error}"
            ) from error
    return ChatFormat(template, dict(data.chat_template_kwargs))


def _encode(
    tokenizer: "PreTrainedTokenizerBase",
    exchange: _Exchange,
    data: DataSpec,
    with_spans: bool = False,
    chat_format: ChatFormat = OWN_FORMAT,
) -> Encoded:
    """The exchange's tokens; a chat whose prompt is longer than `promptMaxLength` with its content marked,
    for `truncate` to cut inside it."""
    if exchange.messages is None:
        return encode_plain(tokenizer, exchange.prompt, exchange.response, with_spans)
    encoded = None
    for cut_ranks in (False, True):
        encoded = encode_chat(
            tokenizer,
            exchange.messages,
            first_response=exchange.first_response,
            add_generation_prompt=not exchange.has_response,
            with_spans=with_spans,
            tools=exchange.tools,
            cut_ranks=cut_ranks,
            chat_format=chat_format,
        )
        if encoded.first_target <= data.prompt_max_length:
            break
    return encoded


def _targets(encoded: Encoded) -> list[int]:
    return encoded.ids[encoded.mask].tolist()


def _tools(fields: Mapping[str, Any]) -> list[Any] | None:
    tools = fields.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise RecordProblem(f"'tools' must be a list of function definitions, got {json_type(tools)}")
    return tools


def _value(fields: Mapping[str, Any], key: str, spec_field: str) -> Any:
    value = fields.get(key)
    if value is None:
        raise RecordProblem(f"missing key {key!r} ({spec_field})")
    return value


def _text(fields: Mapping[str, Any], key: str, spec_field: str) -> str:
    value = _value(fields, key, spec_field)
    if not isinstance(value, str):
        raise RecordProblem(f"{key!r} must be a string, got {json_type(value)}")
    return _nonblank(value, key)


def _nonblank(text: str, key: str) -> str:
    if not text.strip():
        raise RecordProblem(f"{key!r} is empty")
    return unicode_text(text, key)
