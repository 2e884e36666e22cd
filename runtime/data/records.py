"""Reading data files into records (JSON objects), each tagged with where it came from.

Formats and why each is read the way it is:

- **jsonl** is read line by line with the standard library's `json`, not with `datasets`: `datasets` parses
  JSON lines in blocks through pyarrow, which reports a broken record by byte offset (or not at all when it
  coerces types across records) and infers one schema for the whole file. Here every record is parsed on its
  own, so each problem names its `path:line` (1-based) and one bad line does not hide the rest.
- **json** (an array of objects) is parsed element by element with `json.JSONDecoder.raw_decode`, which gives
  each record's start offset and so its line. A syntax error leaves no way to find where the next record
  starts, so it fails the file even with `on_bad_record: skip`. A `.json` file that does not start with `[`
  is read as JSON lines, as `datasets` does.
- **parquet** is read through `datasets` (streaming, so nothing is copied into a cache); rows are typed
  columns, so the row number (0-based, as `datasets` and pyarrow index rows) is the useful location.

Bytes that are not UTF-8 make the record bad (jsonl, json); a missing or unreadable file raises
`DataFileError` naming the path and the spec field.
"""

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubedistill.api.spec import DataFormat, DataSource
from kubedistill.runtime.data.errors import BadRecord, BadRecordError, DataFileError

_EXTENSIONS = {".jsonl": DataFormat.JSONL, ".json": DataFormat.JSON, ".parquet": DataFormat.PARQUET}
# `surrogateescape` turns each byte that is not UTF-8 into one of these code points.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Record:
    """One JSON object from a data file."""

    source: str
    """`path:line` (jsonl, json) or `path:row N` (parquet)."""
    fields: Mapping[str, Any]


def data_format(source: DataSource, field: str) -> DataFormat:
    """The format of `source`: as set, or by the file extension when `auto`."""
    if source.format != DataFormat.AUTO:
        return source.format
    found = _EXTENSIONS.get(Path(source.path).suffix.lower())
    if found is None:
        raise DataFileError(
            f"{field}.format: cannot tell the format of {source.path!r} from its extension "
            f"(known: {', '.join(_EXTENSIONS)}); set format to jsonl, json or parquet"
        )
    return found


def read_records(source: DataSource, field: str = "spec.data.train") -> Iterator[Record | BadRecord]:
    """Records of `source` in file order; records that cannot be read come as `BadRecord`s.

    `field` is the spec path of `source` (`spec.data.train` or `spec.data.eval`), named in file errors.
    """
    reader = {DataFormat.JSONL: _read_jsonl, DataFormat.JSON: _read_json, DataFormat.PARQUET: _read_parquet}
    return reader[data_format(source, field)](source.path, field)


def _unreadable(path: str, field: str, error: Exception) -> DataFileError:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return DataFileError(f"{field}.path: cannot read {path!r}: {reason}")


def _read_bytes(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise _unreadable(path, field, error) from error


def _read_jsonl(path: str, field: str) -> Iterator[Record | BadRecord]:
    try:
        with open(path, "rb") as file:
            yield from _parse_lines(path, enumerate(file, start=1))
    except OSError as error:
        raise _unreadable(path, field, error) from error


def _parse_lines(path: str, lines: Iterable[tuple[int, bytes]]) -> Iterator[Record | BadRecord]:
    for number, raw in lines:
        source = f"{path}:{number}"
        try:
            # utf-8-sig on the first line drops a byte-order mark, which json.loads rejects.
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            yield BadRecord(source, f"not UTF-8: byte 0x{raw[error.start]:02x} at column {error.start + 1}")
            continue
        if not text.strip():
            continue
        try:
            # Without its line break, a record cut off inside a string reads as unterminated, not as holding
            # a control character.
            value = json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as error:
            yield BadRecord(source, _json_problem(error))
            continue
        yield _as_record(source, value)


def _as_record(source: str, value: Any) -> Record | BadRecord:
    if isinstance(value, dict):
        return Record(source, value)
    return BadRecord(source, f"a record must be a JSON object, got {json_type(value)}")


def _read_json(path: str, field: str) -> Iterator[Record | BadRecord]:
    raw = _read_bytes(path, field)
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    position = _WHITESPACE.match(text).end()
    if not text.startswith("[", position):
        yield from _parse_lines(path, enumerate(raw.split(b"\n"), start=1))
        return
    position += 1
    line, counted_to = 1, 0
    while True:
        position = _WHITESPACE.match(text, position).end()
        if text.startswith("]", position):
            return
        line += text.count("\n", counted_to, position)
        counted_to = position
        source = f"{path}:{line}"
        try:
            value, end = _DECODER.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise BadRecordError(
                BadRecord(
                    f"{path}:{error.lineno}",
                    f"{_json_problem(error)}; the rest of the array is unreadable",
                )
            ) from error
        escaped = _ESCAPED_BYTE.search(text, position, end)
        if escaped:
            yield BadRecord(source, f"not UTF-8: byte 0x{ord(escaped.group()) - 0xDC00:02x}")
        else:
            yield _as_record(source, value)
        position = _WHITESPACE.match(text, end).end()
        if text.startswith(",", position):
            position += 1
        elif not text.startswith("]", position):
            line += text.count("\n", counted_to, position)
            raise BadRecordError(
                BadRecord(f"{path}:{line}", "invalid JSON: expected ',' or ']' after a record of the array")
            )


def _json_problem(error: json.JSONDecodeError) -> str:
    # Some of json's messages end in "at" ("Unterminated string starting at") and expect the position next.
    at = "" if error.msg.endswith(" at") else " at"
    return f"invalid JSON: {error.msg}{at} column {error.colno}"


def _read_parquet(path: str, field: str) -> Iterator[Record | BadRecord]:
    # Imported here: `datasets` pulls in torch and pyarrow, which only parquet reading needs.
    import datasets
    import pyarrow

    try:
        rows = iter(datasets.IterableDataset.from_parquet(path))
        for number, row in enumerate(rows):
            yield Record(f"{path}:row {number}", row)
    except (OSError, pyarrow.ArrowException) as error:
        raise _unreadable(path, field, error) from error


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages about wrong types."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
