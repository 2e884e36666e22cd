"""Preparing on worker processes gives exactly what building one record after another gives: the same samples
(ids, masks, spans, truncation notes), the same bad records with their `path:line`, in file order."""

import logging
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest

from kubedistill.api.job import SpecError
from kubedistill.api.spec import DataSource, DataSpec, Mode
from kubedistill.runtime.data import prepare
from kubedistill.runtime.data.errors import BadRecord, BadRecordError
from kubedistill.runtime.data.prepare import build_samples
from kubedistill.runtime.data.records import Record, bytes_to_read, read_records
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.data.tokenize import SampleBuilder
from kubedistill.runtime.demo.tiny import build_tokenizer

from .builders import CORPUS, FILES, write_jsonl
from .test_load import BAD_FILES

WORDS = " ".join(CORPUS).split()


def varied_chats(count: int, seed: int = 0) -> list[dict]:
    """Multi-turn chats with system prompts and a context key, long enough that many get truncated."""
    rng = random.Random(seed)

    def text(most: int) -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(1, most)))

    records = []
    for i in range(count):
        messages = [{"role": "system", "content": text(20)}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": text(30)}, {"role": "assistant", "content": text(40)}]
        records.append({"messages": messages, "context": text(15)})
    return records


def one_after_another(build: SampleBuilder, source: DataSource) -> list[Sample | BadRecord]:
    """The plain path: every record through the builder in turn, a bad one as its `BadRecord`."""
    built: list[Sample | BadRecord] = []
    for record in read_records(source, build.field):
        if isinstance(record, BadRecord):
            built.append(record)
            continue
        try:
            built.append(build(record))
        except BadRecordError as error:
            built.append(error.record)
    return built


def catalogue_and_chats(tmp_path: Path) -> DataSource:
    """Every chat file of the bad-input catalogue read with the default settings, then varied chats: one
    file, so that one pool of workers prepares it all."""
    lines = [
        line
        for bad in BAD_FILES
        if not bad.source and bad.mode == Mode.OFF_POLICY and bad.name.endswith(".jsonl")
        for line in (FILES / bad.name).read_bytes().splitlines(keepends=True)
    ]
    path = write_jsonl(tmp_path / "varied.jsonl", varied_chats(60)).path
    Path(path).write_bytes(b"".join(lines) + Path(path).read_bytes())
    return DataSource(path=path, teacher_input_key=None)


@pytest.mark.parametrize("cross_tokenizer", [False, True], ids=["one-tokenizer", "cross-tokenizer"])
def test_workers_prepare_exactly_what_one_record_after_another_gives(
    tokenizer, tmp_path: Path, cross_tokenizer: bool
) -> None:
    source = catalogue_and_chats(tmp_path)
    if cross_tokenizer:
        source = source.model_copy(update={"teacher_input_key": "context", "path": source.path})
    data = DataSpec(train=source, max_length=96, prompt_max_length=48, on_bad_record="skip")
    teacher = build_tokenizer(CORPUS, vocab_size=300) if cross_tokenizer else tokenizer
    build = SampleBuilder(source, data, tokenizer, Mode.OFF_POLICY, teacher, cross_tokenizer=cross_tokenizer)
    expected = one_after_another(build, source)

    built = list(build_samples(build, read_records(source), 2, serial_records=8, chunk_records=5))

    assert built == expected
    samples = [each for each in built if isinstance(each, Sample)]
    bad = [each for each in built if isinstance(each, BadRecord)]
    assert len(bad) >= (0 if cross_tokenizer else 12), "the catalogue's bad records come through"
    assert sum(sample.truncation is not None for sample in samples) > len(samples) // 4
    assert all((sample.target_spans is not None) == cross_tokenizer for sample in samples)


def test_ray_tasks_prepare_exactly_what_one_record_after_another_gives(
    ray_session: None, tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster's nodes prepare in chunks too: the same samples, spans, truncation notes and bad records
    with their `path:line`, in file order."""
    source = catalogue_and_chats(tmp_path).model_copy(update={"teacher_input_key": "context"})
    data = DataSpec(train=source, max_length=96, prompt_max_length=48, on_bad_record="skip")
    teacher = build_tokenizer(CORPUS, vocab_size=300)
    build = SampleBuilder(source, data, tokenizer, Mode.OFF_POLICY, teacher, cross_tokenizer=True)
    expected = one_after_another(build, source)

    monkeypatch.setattr(prepare, "_build_one", None)  # this process only reads: the tasks build
    built = list(
        build_samples(build, read_records(source), 1, serial_records=8, chunk_records=5, on_ray=True)
    )

    assert built == expected
    samples = [each for each in built if isinstance(each, Sample)]
    bad = [each for each in built if isinstance(each, BadRecord)]
    assert bad and all(each.source.startswith(f"{source.path}:") for each in bad)
    assert sum(sample.truncation is not None for sample in samples) > len(samples) // 4
    assert all(sample.target_spans is not None for sample in samples)


def test_a_small_source_is_prepared_in_this_process(tokenizer, tmp_path: Path, monkeypatch) -> None:
    source = write_jsonl(tmp_path / "train.jsonl", varied_chats(5))
    build = SampleBuilder(source, DataSpec(train=source), tokenizer, Mode.OFF_POLICY, tokenizer)
    monkeypatch.setattr(prepare, "ProcessPoolExecutor", None)
    built = list(build_samples(build, read_records(source), 2, serial_records=5))
    assert [sample.source for sample in built] == [f"{source.path}:{line}" for line in range(1, 6)]


def test_a_long_preparation_logs_records_and_tokens_a_second(
    tokenizer, tmp_path: Path, caplog, monkeypatch
) -> None:
    source = write_jsonl(tmp_path / "train.jsonl", varied_chats(3))
    build = SampleBuilder(source, DataSpec(train=source), tokenizer, Mode.OFF_POLICY, tokenizer)
    monkeypatch.setattr(prepare, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger=prepare.__name__):
        built = list(build_samples(build, read_records(source), 1))
    tokens = [len(sample.input_ids) for sample in built if isinstance(sample, Sample)]
    assert [record.getMessage().split(" in ")[0] for record in caplog.records] == [
        f"spec.data.train: preparing 1 records ({tokens[0]} tokens)",
        f"spec.data.train: preparing 2 records ({sum(tokens[:2])} tokens)",
        f"spec.data.train: preparing 3 records ({sum(tokens)} tokens)",
        f"spec.data.train: prepared 3 records ({sum(tokens)} tokens)",
    ]


def test_a_long_preparation_logs_the_share_of_its_files_read_and_the_time_left(
    tokenizer, tmp_path: Path, caplog, monkeypatch
) -> None:
    source = write_jsonl(tmp_path / "train.jsonl", varied_chats(4))
    build = SampleBuilder(source, DataSpec(train=source), tokenizer, Mode.OFF_POLICY, tokenizer)
    monkeypatch.setattr(prepare, "PROGRESS_SECONDS", 0.0)
    read = bytes_to_read(source)
    assert read is not None and read.total == Path(source.path).stat().st_size
    lines = Path(source.path).read_bytes().splitlines(keepends=True)
    with caplog.at_level(logging.INFO, logger=prepare.__name__):
        list(build_samples(build, read_records(source, read=read), 1, serial_records=1, read=read))
    # Two are read before the first is built (the head that decides between one process and workers), then
    # one a record.
    shares = [len(b"".join(lines[:read_lines])) / read.total for read_lines in (2, 2, 3, 4)]
    messages = [record.getMessage() for record in caplog.records]
    assert [message.split("; ")[-1].split(", about")[0] for message in messages[:4]] == [
        f"{share:.0%} of the files read" for share in shares
    ]
    assert messages[-1].startswith("spec.data.train: prepared 4 records") and "left" not in messages[-1]


def test_a_quick_preparation_logs_nothing(tokenizer, tmp_path: Path, caplog) -> None:
    source = write_jsonl(tmp_path / "train.jsonl", varied_chats(3))
    build = SampleBuilder(source, DataSpec(train=source), tokenizer, Mode.OFF_POLICY, tokenizer)
    with caplog.at_level(logging.INFO, logger=prepare.__name__):
        list(build_samples(build, read_records(source), 1))
    assert caplog.records == []


def test_a_record_is_built_from_its_fields_alone(tokenizer) -> None:
    """What makes chunks independent: a builder holds no state between records (a worker builds any chunk)."""
    source = DataSource(path="mem.jsonl")
    build = SampleBuilder(source, DataSpec(train=source), tokenizer, Mode.OFF_POLICY, tokenizer)
    chats = varied_chats(4)
    forward = [build(Record(f"mem:{i}", fields)) for i, fields in enumerate(chats)]
    backward = [build(Record(f"mem:{i}", fields)) for i, fields in reversed(list(enumerate(chats)))]
    assert forward == backward[::-1]


def test_a_spec_error_crosses_back_from_a_worker_naming_its_field() -> None:
    error = pickle.loads(pickle.dumps(SpecError("spec.data.train", "has an image")))
    assert (error.field, error.message, str(error)) == (
        "spec.data.train",
        "has an image",
        "spec.data.train: has an image",
    )


def test_a_worker_starts_without_importing_torch() -> None:
    """A spawned worker imports the preparing module first; torch would add seconds to every start."""
    check = "import sys, kubedistill.runtime.data.prepare; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
