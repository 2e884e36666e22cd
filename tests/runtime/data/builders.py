"""Small builders shared by the data tests: records, files and spec objects."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubedistill.api.spec import DataSource, DataSpec

FILES = Path(__file__).parent / "files"

# Text the tiny tokenizer is trained on: the words the tests use, so sequences stay short.
CORPUS = [
    "What is 2+2? The answer is 4. Be brief. Answer tersely. You are a careful tutor.",
    "hello there, how are you? I am fine, thank you. Tell me more about it.",
    "system user assistant Paris is the capital of France. What is the capital of France?",
]


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def write_jsonl(path: Path, records: Sequence[object], **source: Any) -> DataSource:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return DataSource(path=str(path), **source)


def spec(source: DataSource, **data: Any) -> DataSpec:
    return DataSpec(train=source, **data)


def decoded_targets(tokenizer: Any, ids: Sequence[int], mask: Sequence[bool]) -> str:
    return tokenizer.decode([token for token, target in zip(ids, mask, strict=True) if target])


# Qwen2.5-Instruct's chat template (its tokenizer_config.json), the part for messages without `tools`:
# tool calls are rendered inside the assistant's turn, tool results as a user turn of <tool_response>s.
TOOL_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system') or (message.role == 'assistant' and not "
    "message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' }}{{- tool_call.name }}{{- \'", "arguments": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}"
    "{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
