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


def test_scored_answers_keep_each_records_answer_and_a_record_without_one_is_bad(tmp_path: Path) -> None:
    """scoreAnswers: a prompt is the question with its answer, so two answers to one question are both
    scored; a record that ends in the user's turn has nothing to score."""
    data = tmp_path / "train.jsonl"
    other = _chat("What is 2+2?")
    other["messages"][-1]["content"] = "four"
    records = [_chat("What is 2+2?"), other, {"messages": [{"role": "user", "content": "Hi?"}]}]
    data.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    read = read_prompts(DataSource(path=str(data)), OnBadRecord.SKIP, answers=True)
    assert [prompt.answer for prompt in read.prompts] == [
        [{"role": "assistant", "content": "old"}],
        [{"role": "assistant", "content": "four"}],
    ]
    assert read.repeated == []
    (bad,) = read.bad
    assert bad.source == f"{data}:3" and "does not end in an assistant answer" in bad.problem
