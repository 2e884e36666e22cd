"""Chat messages of a record, checked and brought to the shape chat templates read.

Accepted as the OpenAI chat format writes them:
- `role`: system, user, assistant or tool;
- `content`: a string, or a list of content parts `{"type": "text", "text": ...}` (joined); with a
  vision-language model, also image parts (`data.images`: kept as a list of `{"type": "image", "image":
  <the loaded image>}` and text parts, the form Qwen-VL templates read); an image for a text model refuses
  the job (`ImageInTextJob`), a part of any other type is a bad record; null or missing on an assistant
  message that calls tools;
- `tool_calls` on assistant messages: `{"type": "function", "function": {"name", "arguments"}}` (`id`
  optional). `arguments` as a JSON string (OpenAI) becomes the object it encodes, the form templates read
  (Qwen2.5's renders `arguments | tojson`, Qwen3-Coder's iterates over it);
- `tool` messages, the results of the tool calls before them (`tool_call_id`, `name` kept for templates);
- `reasoning_content` (or gpt-oss's `thinking`, vLLM's `reasoning`) on assistant messages, a reasoning
  model's thinking, kept under the names templates read it by (`data.reasoning`).

Every key the template needs is kept and nothing else, so a key the data happens to carry cannot change
what the mask covers. `wire_messages` turns checked messages back into what the OpenAI chat API takes.
"""

import json
from pathlib import Path
from typing import Any

from kubedistill.runtime.data.chat import Message
from kubedistill.runtime.data.errors import RecordProblem
from kubedistill.runtime.data.images import IMAGE_PART_TYPES, ImageInTextJob, image_reference, load_image
from kubedistill.runtime.data.reasoning import TEMPLATE_KEYS, reasoning_key
from kubedistill.runtime.data.records import json_type

ROLES = ("system", "user", "assistant", "tool")
_TOOL_KEYS = ("tool_call_id", "name")


def chat_messages(value: Any, key: str, image_folder: Path | None = None) -> list[Message]:
    """The messages of a record's `key`; `RecordProblem` naming the message and what is wrong with it.

    `image_folder`: the model reads images, and relative image paths are relative to this folder; None for
    a text model."""
    if not isinstance(value, list):
        raise RecordProblem(f"{key!r} must be a list of messages, got {json_type(value)}")
    if not value:
        raise RecordProblem(f"{key!r} is an empty list")
    messages: list[Message] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RecordProblem(f"{key!r}: message {i} must be an object, got {json_type(message)}")
        role = message.get("role")
        if role not in ROLES:
            raise RecordProblem(f"{key!r}: message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        calls = message.get("tool_calls")
        content = message.get("content")
        if _has_images(content):
            if role == "assistant":
                raise RecordProblem(
                    f"{key!r}: message {i} is an assistant's and holds an image; models write text"
                )
            checked: Message = {"role": role, "content": _parts(content, key, i, image_folder)}
        else:
            checked = {"role": role, "content": _content(content, key, i, bool(calls))}
        if calls:
            if role != "assistant":
                raise RecordProblem(
                    f"{key!r}: message {i} has tool_calls but role {role!r}; only assistants call tools"
                )
            checked["tool_calls"] = [
                _tool_call(call, key, i, j) for j, call in enumerate(_list(calls, key, i))
            ]
        thinking = reasoning_key(message) if role == "assistant" else None
        if thinking is not None:
            text = unicode_text(message[thinking], f"{key}[{i}].{thinking}")
            checked.update((name, text) for name in TEMPLATE_KEYS)
        if role == "tool":
            if not _follows_a_tool_call(messages):
                raise RecordProblem(
                    f"{key!r}: message {i} is a tool result, but no assistant message with tool_calls "
                    "comes before it"
                )
            checked.update((name, message[name]) for name in _TOOL_KEYS if isinstance(message.get(name), str))
        messages.append(checked)
    return messages


def unicode_text(text: str, key: str) -> str:
    # JSON can escape half of a surrogate pair ("\\ud800"); such a string has no UTF-8 form to tokenise.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise RecordProblem(
            f"{key!r} holds a lone surrogate {text[error.start]!r}, which is not text"
        ) from error
    return text


def _content(content: Any, key: str, i: int, calls_tools: bool) -> str:
    where = f"{key!r}: message {i} content"
    if content is None and calls_tools:
        return ""
    if isinstance(content, list):
        content = "".join(_text_part(part, where, j) for j, part in enumerate(content))
    if not isinstance(content, str):
        raise RecordProblem(f"{where} must be a string or a list of text parts, got {json_type(content)}")
    return unicode_text(content, f"{key}[{i}].content")


def has_images(message: Message) -> bool:
    """Whether a checked message carries images (its content is a list of parts)."""
    return isinstance(message["content"], list)


def _has_images(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES for part in content
    )


def _parts(content: list[Any], key: str, i: int, image_folder: Path | None) -> list[dict[str, Any]]:
    """Text and image parts, the images loaded; text parts stay apart so that each keeps its place."""
    where = f"{key!r}: message {i} content"
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES:
            reference = image_reference(part, f"{where} part {j}")
            if image_folder is None:
                raise ImageInTextJob(f"{where} part {j} is an image ({reference[:60]!r})")
            parts.append({"type": "image", "image": load_image(reference, image_folder, f"{where} part {j}")})
        else:
            text = unicode_text(_text_part(part, where, j), f"{key}[{i}].content")
            parts.append({"type": "text", "text": text})
    return parts


def _text_part(part: Any, where: str, j: int) -> str:
    if not isinstance(part, dict):
        raise RecordProblem(f"{where} part {j} must be an object, got {json_type(part)}")
    if part.get("type") != "text":
        raise RecordProblem(
            f"{where} part {j} has type {part.get('type')!r}; only text parts can train a text model"
        )
    if not isinstance(part.get("text"), str):
        raise RecordProblem(f"{where} part {j} text must be a string, got {json_type(part.get('text'))}")
    return part["text"]


def _list(calls: Any, key: str, i: int) -> list[Any]:
    if not isinstance(calls, list):
        raise RecordProblem(f"{key!r}: message {i} tool_calls must be a list, got {json_type(calls)}")
    return calls


def _tool_call(call: Any, key: str, i: int, j: int) -> dict[str, Any]:
    where = f"{key!r}: message {i} tool call {j}"
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise RecordProblem(f"{where} must be an object with function.name (a string)")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as error:
            raise RecordProblem(f"{where} function.arguments is not JSON: {error.msg}") from error
    if not isinstance(arguments, dict):
        raise RecordProblem(f"{where} function.arguments must be an object, got {json_type(arguments)}")
    checked: dict[str, Any] = {
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }
    if isinstance(call.get("id"), str):
        checked["id"] = call["id"]
    return checked


def _follows_a_tool_call(messages: list[Message]) -> bool:
    for message in reversed(messages):
        if message["role"] != "tool":
            return bool(message.get("tool_calls"))
    return False


def wire_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Checked text messages as the OpenAI chat API takes them (openai-python `types/chat/`
    `chat_completion_message_function_tool_call_param.py` and `chat_completion_tool_message_param.py`): a
    tool call's `arguments` as JSON text, every call with an `id` (`call_<message>_<call>` where the record
    gave none), every tool result with the `tool_call_id` of its call (the record's, else the first call
    still unanswered whose name it gives, else the first unanswered), and no key the API does not define
    (a tool result's `name` is the templates')."""
    wire: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []
    """(id, function name) of the last assistant's calls no tool result has answered yet."""
    for i, message in enumerate(messages):
        sent: dict[str, Any] = {"role": message["role"], "content": message["content"]}
        if message.get("tool_calls"):
            calls = [
                {
                    "id": call.get("id") or f"call_{i}_{j}",
                    "type": "function",
                    "function": {
                        "name": call["function"]["name"],
                        "arguments": json.dumps(call["function"]["arguments"], ensure_ascii=False),
                    },
                }
                for j, call in enumerate(message["tool_calls"])
            ]
            sent = {"role": "assistant", "content": message["content"] or None, "tool_calls": calls}
            unanswered = [(call["id"], call["function"]["name"]) for call in calls]
        elif message["role"] == "tool":
            sent["tool_call_id"] = _answered_call(message, unanswered)
        wire.append(sent)
    return wire


def _answered_call(result: Message, unanswered: list[tuple[str, str]]) -> str:
    given = result.get("tool_call_id")
    candidates = (
        [call for call in unanswered if call[0] == given]
        or [call for call in unanswered if call[1] == result.get("name")]
        or unanswered
    )
    if not candidates:
        # More results than calls: nothing to match; the endpoint refuses the request and says so.
        return given or "call_unmatched"
    answered = candidates[0]
    unanswered.remove(answered)
    return given or answered[0]
