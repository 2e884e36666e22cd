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
