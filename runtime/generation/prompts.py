"""The prompts of the training data: what the teacher is asked to answer.

A chat record's prompt is its messages up to and including the last user turn (an assistant answer after
it, if any, is what the teacher replaces); a prompt/response record's prompt is its `promptKey` text as a
user message (its response, if any, is replaced the same way). Records are read and checked by the data
pipeline's own readers, so a bad line names its `file:line` as in training.

With spec.generation.scoreAnswers the answer is kept instead (`Prompt.answer`), for the teacher to score.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubedistill.api.spec import DataSource, OnBadRecord
from kubedistill.runtime.data.chat import Message
from kubedistill.runtime.data.errors import BadRecord, BadRecordError, DataFileError, RecordProblem
from kubedistill.runtime.data.messages import chat_messages, unicode_text
from kubedistill.runtime.data.records import json_type, read_records


@dataclass(frozen=True)
class Prompt:
    id: str
    """Digest of the messages: identifies the prompt across reruns, whatever the record order."""
    messages: list[Message]
    source: str
    """`path:line` of the record."""
    carried: Mapping[str, Any]
    """Fields the generated record keeps from the source record (its `teacherInputKey` and `tools`)."""
    answer: list[Message] = field(default_factory=list)
    """With `answers`: the record's messages after its last user turn, ending in the assistant's answer."""


def prompt_id(messages: list[Message]) -> str:
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Prompts:
    prompts: list[Prompt]
    """Every distinct prompt in file order: a prompt met twice is asked once."""
    repeated: list[str]
    """`path:line` of each record whose prompt an earlier record already had (counted, not asked again)."""
    bad: list[BadRecord]
    """Records skipped under `onBadRecord: skip`."""


def read_prompts(
    source: DataSource, on_bad_record: OnBadRecord, field: str = "spec.data.train", answers: bool = False
) -> Prompts:
    """The distinct prompts; with `answers` (spec.generation.scoreAnswers) each with its record's answer, and
    a prompt is the pair, so that two answers to one question are both scored."""
    prompts: dict[str, Prompt] = {}
    repeated: list[str] = []
    bad: list[BadRecord] = []
    for record in read_records(source, field):
        try:
            if isinstance(record, BadRecord):
                raise BadRecordError(record)
            try:
                messages = _prompt_messages(record.fields, source, field)
                answer = _answer_messages(record.fields, source, field, len(messages)) if answers else []
            except RecordProblem as problem:
                raise BadRecordError(BadRecord(record.source, str(problem))) from None
        except BadRecordError as error:
            if on_bad_record == OnBadRecord.FAIL:
                raise
            bad.append(error.record)
            continue
        carried = {
            key: record.fields[key]
            for key in (source.teacher_input_key, "tools")
            if key is not None and record.fields.get(key) is not None
        }
        found = Prompt(prompt_id(messages + answer), messages, record.source, carried, answer)
        if found.id in prompts:
            repeated.append(record.source)
        else:
            prompts[found.id] = found
    if not prompts:
        raise DataFileError(f"{source.path}: no prompts to generate responses for ({field}.path)")
    return Prompts(list(prompts.values()), repeated, bad)


def _prompt_messages(fields: Mapping[str, Any], source: DataSource, field: str) -> list[Message]:
    if source.prompt_key is not None:
        text = fields.get(source.prompt_key)
        if not isinstance(text, str) or not text.strip():
            got = (
                "missing" if text is None else f"{json_type(text)}" if not isinstance(text, str) else "empty"
            )
            raise RecordProblem(
                f"{source.prompt_key!r} ({field}.promptKey) must be a non-empty string: {got}"
            )
        return [{"role": "user", "content": unicode_text(text, source.prompt_key)}]
    value = fields.get(source.input_key)
    if value is None:
        raise RecordProblem(f"missing key {source.input_key!r} ({field}.inputKey)")
    messages = chat_messages(value, source.input_key)
    users = [i for i, message in enumerate(messages) if message["role"] == "user"]
    if not users:
        raise RecordProblem(f"{source.input_key!r} has no user message to answer")
    return messages[: users[-1] + 1]


def _answer_messages(fields: Mapping[str, Any], source: DataSource, field: str, after: int) -> list[Message]:
    if source.prompt_key is not None:
        text = fields.get(source.response_key) if source.response_key is not None else None
        if not isinstance(text, str) or not text.strip():
            raise RecordProblem(
                f"has no response ({field}.responseKey) for spec.generation.scoreAnswers to score"
            )
        return [{"role": "assistant", "content": unicode_text(text, source.response_key or "")}]
    answer = chat_messages(fields[source.input_key], source.input_key)[after:]
    if not answer or answer[-1]["role"] != "assistant":
        raise RecordProblem(
            f"{source.input_key!r} does not end in an assistant answer after its last user turn, which "
            "spec.generation.scoreAnswers scores"
        )
    return answer
