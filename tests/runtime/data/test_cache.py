"""Prepared once: a second load with the same files and settings maps the kept set instead of tokenising, and
gets exactly the samples, bad records and truncation notes the first one prepared; anything that shapes the
samples (a file, a data setting, the tokenizer's chat template) makes it prepare afresh."""

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubedistill.api.spec import DataSource, DataSpec, MixtureSource, Mode
from kubedistill.runtime.data import load
from kubedistill.runtime.data.load import LoadedData, load_samples

from .builders import chat, write_jsonl

RECORDS = [
    chat(("user", "What is 2+2?"), ("assistant", "The answer is 4.")),
    {"messages": "not a list"},
    chat(("system", "Be brief. " * 30), ("user", "Tell me more about it."), ("assistant", "I am fine.")),
]


def load_twice(tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[LoadedData, int]:
    """Load, then load again; the second load's count of preparations (0: it read the kept set)."""
    source = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    data = DataSpec(train=source, on_bad_record="skip", prompt_max_length=24)
    first = load_samples(source, data, tokenizer, mode=Mode.OFF_POLICY, cache=tmp_path / "prepared")
    preparations = counting_preparations(monkeypatch)
    second = load_samples(source, data, tokenizer, mode=Mode.OFF_POLICY, cache=tmp_path / "prepared")
    assert (second.samples, second.bad_records, second.key) == (first.samples, first.bad_records, first.key)
    return second, len(preparations)


def counting_preparations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    prepare = load._prepare

    def counted(*args: Any) -> Any:
        calls.append(args[5])
        return prepare(*args)

    monkeypatch.setattr(load, "_prepare", counted)
    return calls


def test_a_second_load_maps_the_prepared_set_and_gets_the_same_samples(
    tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    second, preparations = load_twice(tmp_path, tokenizer, monkeypatch)
    assert preparations == 0
    assert all(isinstance(sample.input_ids.base, np.memmap) for sample in second.samples)
    assert [bad.source.rsplit(":", 1)[1] for bad in second.bad_records] == ["2"]
    assert (
        second.truncated[0].truncation is not None and "promptMaxLength 24" in second.truncated[0].truncation
    )


def test_the_first_load_too_holds_the_set_it_kept_memory_mapped(tokenizer, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    data = DataSpec(train=source, on_bad_record="skip")
    first = load_samples(source, data, tokenizer, mode=Mode.OFF_POLICY, cache=tmp_path / "prepared")
    without = load_samples(source, data, tokenizer, mode=Mode.OFF_POLICY)
    assert first.samples == without.samples and first.bad_records == without.bad_records
    assert all(isinstance(sample.target_mask.base, np.memmap) for sample in first.samples)


def test_a_teacher_of_its_own_with_its_spans_comes_back_whole(tokenizer, tmp_path: Path) -> None:
    from kubedistill.runtime.demo.tiny import build_tokenizer

    from .builders import CORPUS

    teacher = build_tokenizer(CORPUS, vocab_size=300)
    source = write_jsonl(tmp_path / "train.jsonl", [RECORDS[0], RECORDS[2]])
    data = DataSpec(train=source, max_length=400)

    def loaded() -> LoadedData:
        return load_samples(
            source,
            data,
            tokenizer,
            mode=Mode.OFF_POLICY,
            teacher_tokenizer=teacher,
            cross_tokenizer=True,
            cache=tmp_path / "prepared",
        )

    first, second = loaded(), loaded()
    assert second.samples == first.samples
    assert all(sample.teacher_target_spans is not None for sample in second.samples)


def touch_file(source: DataSource, data: DataSpec, tokenizer: Any) -> tuple[DataSource, DataSpec, Any]:
    path = Path(source.path)
    path.write_text(path.read_text().replace("2+2", "3+1"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    return source, data, tokenizer


def other_max_length(source: DataSource, data: DataSpec, tokenizer: Any) -> tuple[DataSource, DataSpec, Any]:
    return source, data.model_copy(update={"max_length": 64}), tokenizer


def other_template(source: DataSource, data: DataSpec, tokenizer: Any) -> tuple[DataSource, DataSpec, Any]:
    changed = copy.deepcopy(tokenizer)
    changed.chat_template = tokenizer.chat_template.replace("<|im_end|>", "<|im_end|> ")
    return source, data, changed


def other_response_key(
    source: DataSource, data: DataSpec, tokenizer: Any
) -> tuple[DataSource, DataSpec, Any]:
    return source.model_copy(update={"teacher_input_key": "context"}), data, tokenizer


def other_max_samples(source: DataSource, data: DataSpec, tokenizer: Any) -> tuple[DataSource, DataSpec, Any]:
    return source.model_copy(update={"max_samples": 1}), data, tokenizer


@pytest.mark.parametrize(
    "change",
    [touch_file, other_max_length, other_template, other_response_key, other_max_samples],
    ids=[
        "data-file",
        "spec.data.maxLength",
        "chat-template",
        "spec.data.train.teacherInputKey",
        "spec.data.train.maxSamples",
    ],
)
def test_anything_that_shapes_the_samples_makes_a_new_set(
    tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Any
) -> None:
    source = write_jsonl(tmp_path / "train.jsonl", [RECORDS[0], {**RECORDS[0], "context": "Be brief."}])
    data = DataSpec(train=source, on_bad_record="skip")
    cache = tmp_path / "prepared"
    first = load_samples(source, data, tokenizer, mode=Mode.OFF_POLICY, cache=cache)
    source, data, tokenizer = change(source, data, tokenizer)
    preparations = counting_preparations(monkeypatch)
    again = load_samples(source, data, tokenizer, mode=Mode.OFF_POLICY, cache=cache)
    assert len(preparations) == 1
    assert again.key != first.key
    assert [path.name for path in cache.iterdir()] == [f"spec.data.train-{again.key}"], "one set a source"


def test_a_source_read_through_datasets_is_not_kept(tokenizer, tmp_path: Path) -> None:
    from datasets import Dataset

    folder = tmp_path / "saved"
    Dataset.from_list([RECORDS[0]]).save_to_disk(str(folder))
    source = DataSource(path=str(folder))
    loaded = load_samples(
        source, DataSpec(train=source), tokenizer, mode=Mode.OFF_POLICY, cache=tmp_path / "c"
    )
    assert loaded.key is None and not (tmp_path / "c").exists()


def test_a_mixture_source_keeps_its_set_when_reweighted_and_replaces_it_when_its_records_change(
    tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [RECORDS[0], RECORDS[0]]).path
    other = write_jsonl(tmp_path / "b.jsonl", [RECORDS[0]]).path
    part = MixtureSource(path=path, weight=0.7)
    data = DataSpec(mixture=[part, MixtureSource(path=other, weight=0.3)])
    field, cache = "spec.data.mixture[0]", tmp_path / "prepared"
    first = load_samples(part, data, tokenizer, mode=Mode.OFF_POLICY, field=field, cache=cache)
    preparations = counting_preparations(monkeypatch)

    # The weight picks among the samples; it does not shape them.
    reweighted = DataSpec(
        mixture=[part.model_copy(update={"weight": 0.2}), MixtureSource(path=other, weight=0.8)]
    )
    again = load_samples(
        reweighted.mixture[0], reweighted, tokenizer, mode=Mode.OFF_POLICY, field=field, cache=cache
    )
    assert (len(preparations), again.key) == (0, first.key)

    fewer = part.model_copy(update={"max_samples": 1})
    cut = load_samples(fewer, data, tokenizer, mode=Mode.OFF_POLICY, field=field, cache=cache)
    assert (len(preparations), len(cut.samples)) == (1, 1)
    assert [path.name for path in cache.iterdir()] == [f"{field}-{cut.key}"], "the earlier set is replaced"
