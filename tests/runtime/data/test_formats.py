"""The forms training data comes in: gzip files, folders of shards, globs, `datasets`' saved datasets, and
hub datasets; each record still named by where it is."""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kubedistill.api.spec import DataSource
from kubedistill.runtime.data import DataFileError
from kubedistill.runtime.data.records import Record, read_records

ROWS = [
    {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
    for i in range(3)
]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _read(path: Path | str, **source: object) -> list[Record]:
    return list(read_records(DataSource(path=str(path), **source)))


def test_a_gzipped_jsonl_file_is_read_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress(_jsonl(ROWS)))
    assert _read(path) == [Record(f"{path}:{i + 1}", row) for i, row in enumerate(ROWS)]


def test_a_gzipped_json_array_is_read_record_by_record(tmp_path: Path) -> None:
    path = tmp_path / "train.json.gz"
    path.write_bytes(gzip.compress(json.dumps(ROWS, indent=0).encode()))
    assert [record.fields for record in _read(path)] == ROWS


@pytest.mark.parametrize("name", ["train.jsonl.gz", "train.json.gz"])
def test_a_file_that_is_not_gzip_names_the_path_and_the_field(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(_jsonl(ROWS))
    with pytest.raises(
        DataFileError, match=rf"^spec.data.train.path: cannot read '{path}': the gzip data is corrupt"
    ):
        _read(path)


def test_a_gzip_stream_that_breaks_off_names_the_last_line_read(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl.gz"
    whole = gzip.compress(_jsonl(ROWS * 400))
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        DataFileError,
        match=rf"^spec.data.train.path: cannot read '{path}': the gzip data is corrupt after line \d+",
    ):
        _read(path)


def test_a_folder_of_shards_is_read_shard_by_shard_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "part-1.jsonl").write_bytes(_jsonl(ROWS[1:]))
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "part-2.json").write_text(json.dumps(ROWS[:1]))
    (tmp_path / "part-0.jsonl.gz").write_bytes(gzip.compress(_jsonl(ROWS[:1])))
    (tmp_path / "README.md").write_text("not data")
    assert [record.source for record in _read(tmp_path)] == [
        f"{tmp_path}/nested/part-2.json:1",
        f"{tmp_path}/part-0.jsonl.gz:1",
        f"{tmp_path}/part-1.jsonl:1",
        f"{tmp_path}/part-1.jsonl:2",
    ]


def test_an_explicit_format_reads_only_its_files_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(_jsonl(ROWS))
    (tmp_path / "b.json").write_text(json.dumps(ROWS))
    assert {record.source.split(":")[0] for record in _read(tmp_path, format="jsonl")} == {
        f"{tmp_path}/a.jsonl"
    }


def test_a_folder_without_data_files_names_the_path_field_not_the_format(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(
        DataFileError, match=rf"^spec.data.train.path: the folder '{tmp_path}' holds no data files \(.jsonl, "
    ) as raised:
        _read(tmp_path)
    assert "format" not in str(raised.value)


def test_a_glob_reads_every_file_it_matches_in_name_order(tmp_path: Path) -> None:
    for i, row in enumerate(ROWS):
        (tmp_path / f"train-{i}.jsonl").write_bytes(_jsonl([row]))
    (tmp_path / "eval-0.jsonl").write_bytes(_jsonl(ROWS))
    records = _read(tmp_path / "train-*.jsonl")
    assert [record.source for record in records] == [f"{tmp_path}/train-{i}.jsonl:1" for i in range(3)]


def test_a_glob_that_matches_nothing_names_the_pattern_and_the_field(tmp_path: Path) -> None:
    pattern = tmp_path / "train-*.jsonl"
    with pytest.raises(
        DataFileError, match=rf"^spec.data.eval.path: no file matches '{re.escape(str(pattern))}'"
    ):
        list(read_records(DataSource(path=str(pattern)), "spec.data.eval"))


def test_a_dataset_saved_with_save_to_disk_is_read_row_by_row(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    records = _read(tmp_path / "saved")
    assert records == [Record(f"{tmp_path / 'saved'}:row {i}", row) for i, row in enumerate(ROWS)]


def test_a_saved_dataset_dict_reads_the_split_named(tmp_path: Path) -> None:
    import datasets

    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}
    ).save_to_disk(str(saved))
    assert [record.source for record in _read(saved, split="test")] == [f"{saved}[test]:row 0"]
    with pytest.raises(
        DataFileError, match=r"^spec.data.train.split: .* a DatasetDict with the splits train, test"
    ):
        _read(saved)


def test_a_hub_dataset_that_is_not_in_the_offline_cache_names_the_field(tmp_path: Path) -> None:
    """`datasets.load_dataset(id, split=...)` for real, offline (nothing here reaches the hub)."""
    code = (
        "from kubedistill.api.spec import DataSource\n"
        "from kubedistill.runtime.data.records import read_records\n"
        "from kubedistill.runtime.data import DataFileError\n"
        "try:\n"
        "    read_records(DataSource(path='kubedistill-tests/no-such-dataset', split='train'))\n"
        "except DataFileError as error:\n"
        "    print(error)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.startswith(
        "spec.data.train.path: cannot load the hub dataset 'kubedistill-tests/no-such-dataset' "
        "(split 'train'): "
    ), done.stdout + done.stderr
    assert "HF_HUB_OFFLINE is set" in done.stdout


@pytest.mark.parametrize("relative", [False, True], ids=["absolute-path", "relative-data-file"])
def test_a_local_looking_path_that_does_not_exist_is_never_tried_on_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool
) -> None:
    """With `split` set, `owner/name` is a hub id; `/data/train` and `data/train.jsonl` are local paths."""
    monkeypatch.chdir(tmp_path)
    missing = "data/train.jsonl" if relative else str(tmp_path / "data" / "train")
    with pytest.raises(DataFileError, match=rf"^spec.data.train.path: cannot read '{missing}': No such file"):
        _read(missing, split="train")
