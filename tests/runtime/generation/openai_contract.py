"""The request contract of the OpenAI chat API, from the `openai` package's own request type
(`openai.types.chat.completion_create_params.CompletionCreateParamsNonStreaming`), so that a body the API
would refuse fails a test here rather than every request of a job.

Two things make pydantic hold the TypedDicts to it: keys they do not define are refused (the config of a
model wrapping them reaches the nested TypedDicts, which have none of their own), and the `Iterable[...]`
fields (messages, tool calls, content parts), which pydantic validates lazily, are consumed.
"""

from collections.abc import Iterator
from typing import Any

from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import BaseModel, ConfigDict, ValidationError


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: CompletionCreateParamsNonStreaming


def request_problem(body: dict[str, Any]) -> str | None:
    """Why the API would refuse `body` (pydantic's errors), or None."""
    try:
        _consume(_Body(body=body).body)  # type: ignore[arg-type]
    except ValidationError as error:
        return str(error)
    return None


def _consume(value: Any) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _consume(item)
    elif isinstance(value, list | Iterator):
        for item in value:
            _consume(item)
