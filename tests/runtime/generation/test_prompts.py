"""The teacher is asked each distinct prompt once; a record that repeats one is counted, not lost silently."""

import json
from pathlib import Path

from kubedistill.api.spec import DataSource, OnBadRecord
from kubedistill.runtime.generation.prompts import read_prompts


def _chat(question: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "old"}]}


def test_a_repeated_prompt_is_asked_once_and_each_repeat_is_named(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    records = [_chat("What is 2+2?"), _chat("Name a colour."), _chat("What is 2+2?")]
    data.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    read = read_prompts(DataSource(path=str(data)), OnBadRecord.FAIL)
    assert [prompt.messages for prompt in read.prompts] == [
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "user", "content": "Name a colour."}],
    ]
    assert read.repeated == [f"{data}:3"]
    assert read.bad == []
