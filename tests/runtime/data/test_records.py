import json
from pathlib import Path

import pytest

from kubedistill.api.spec import DataFormat, DataSource
from kubedistill.runtime.data.errors import BadRecord, DataFileError
from kubedistill.runtime.data.records import Record, data_format, read_records

from .builders import FILES


def sources(records: list[Record | BadRecord]) -> list[str]:
    return [record.source for record in records]


def test_jsonl_records_are_named_by_their_line_and_blank_lines_keep_the_count(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\r\n{"a": 3}')
    records = list(read_records(DataSource(path=str(path))))
    assert records == [
        Record(f"{path}:1", {"a": 1}),
        Record(f"{path}:4", {"a": 2}),
        Record(f"{path}:5", {"a": 3}),
    ]


def test_a_byte_order_mark_does_not_break_the_first_record(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert list(read_records(DataSource(path=str(path)))) == [Record(f"{path}:1", {"a": 1})]


def test_json_array_records_are_named_by_the_line_they_start_on() -> None:
    path = FILES / "array_missing_messages.json"
    records = list(read_records(DataSource(path=str(path))))
    assert sources(records) == [f"{path}:2", f"{path}:14", f"{path}:17"]
    assert records[1] == Record(f"{path}:14", {"conversation": []})


def test_records_of_a_one_line_json_array_share_its_line(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text('[{"a": 1}, {"a": 2}]')
    assert list(read_records(DataSource(path=str(path)))) == [
        Record(f"{path}:1", {"a": 1}),
        Record(f"{path}:1", {"a": 2}),
    ]


def test_a_json_file_holding_json_lines_is_read_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    assert list(read_records(DataSource(path=str(path)))) == [
        Record(f"{path}:1", {"a": 1}),
        Record(f"{path}:2", {"a": 2}),
    ]


def test_non_utf8_bytes_in_a_json_array_make_only_their_record_bad(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_bytes(b'[\n{"a": "ok"},\n{"a": "caf\xe9"},\n{"a": "ok"}\n]')
    records = list(read_records(DataSource(path=str(path))))
    assert records == [
        Record(f"{path}:2", {"a": "ok"}),
        BadRecord(f"{path}:3", "not UTF-8: byte 0xe9"),
        Record(f"{path}:4", {"a": "ok"}),
    ]


def test_parquet_rows_are_read_through_datasets_and_named_by_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    messages = [[{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "yo"}]]
    pq.write_table(pa.table({"messages": messages, "id": [7, 8]}), path)
    records = list(read_records(DataSource(path=str(path))))
    assert records == [
        Record(f"{path}:row 0", {"messages": messages[0], "id": 7}),
        Record(f"{path}:row 1", {"messages": messages[1], "id": 8}),
    ]


def test_a_corrupt_parquet_file_names_the_path_and_the_spec_field(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataFileError, match=rf"^spec.data.train.path: cannot read '{path}': "):
        list(read_records(DataSource(path=str(path))))


@pytest.mark.parametrize(
    ("name", "format"),
    [
        ("a/train.jsonl", DataFormat.JSONL),
        ("train.JSONL", DataFormat.JSONL),
        ("train.json", DataFormat.JSON),
        ("train.parquet", DataFormat.PARQUET),
        ("train.jsonl.gz", DataFormat.JSONL),
        ("train.JSON.GZ", DataFormat.JSON),
    ],
)
def test_auto_format_goes_by_the_extension(name: str, format: DataFormat) -> None:
    assert data_format(DataSource(path=name), "spec.data.train") == format


def test_an_explicit_format_wins_over_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text(json.dumps({"a": 1}) + "\n")
    assert list(read_records(DataSource(path=str(path), format="jsonl"))) == [Record(f"{path}:1", {"a": 1})]


def test_an_unknown_extension_asks_for_the_format_field(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("")
    with pytest.raises(DataFileError, match=rf"^spec.data.eval.format: cannot tell the format of '{path}'"):
        read_records(DataSource(path=str(path)), "spec.data.eval")


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.json", "missing.parquet"])
def test_a_missing_file_names_the_path_and_the_spec_field(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(DataFileError, match=rf"^spec.data.train.path: cannot read '{path}'"):
        list(read_records(DataSource(path=str(path))))


def test_max_samples_reads_the_first_records_and_never_the_rest(tmp_path: Path) -> None:
    """Record 3 of the jsonl file is broken, the json array breaks off after its third record, and the third
    file is no gzip at all: none of it is read with maxSamples 2 (a bad record counts as one read)."""
    (tmp_path / "a.jsonl").write_text('{"a": 1}\n{"a": 2}\n{"a": \n')
    (tmp_path / "b.json").write_text('[{"b": 1}, "not an object", {"b": 3} {"b": 4}]')
    (tmp_path / "c.jsonl.gz").write_bytes(b"not gzip")
    taken = list(read_records(DataSource(path=str(tmp_path / "a.jsonl"), max_samples=2)))
    assert taken == [Record(f"{tmp_path}/a.jsonl:1", {"a": 1}), Record(f"{tmp_path}/a.jsonl:2", {"a": 2})]

    array = list(read_records(DataSource(path=str(tmp_path / "b.json"), max_samples=2)))
    assert sources(array) == [f"{tmp_path}/b.json:1", f"{tmp_path}/b.json:1"]
    assert isinstance(array[1], BadRecord)

    folder = list(read_records(DataSource(path=str(tmp_path), max_samples=3)))
    assert sources(folder) == [f"{tmp_path}/a.jsonl:1", f"{tmp_path}/a.jsonl:2", f"{tmp_path}/a.jsonl:3"]
    assert isinstance(folder[2], BadRecord)


def test_max_samples_beyond_the_records_reads_them_all(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    assert len(list(read_records(DataSource(path=str(path), max_samples=5)))) == 2
