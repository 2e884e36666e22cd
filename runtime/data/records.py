"""Reading data into records (JSON objects), each tagged with where it came from.

What `spec.data.<source>.path` may name, and how each is read:

- **a file**: `.jsonl`, `.json`, `.parquet`, and `.jsonl.gz` / `.json.gz` (gzip, decompressed as read);
- **a folder of shards**: every data file in it (those extensions, at any depth), in name order;
- **a glob** (`data/train-*.jsonl.gz`): every file it matches, in name order;
- **a dataset saved with `datasets`' `save_to_disk`** (a folder holding `state.json`, or `dataset_dict.json`
  with `split` naming the part to read);
- **a hub dataset id** with `split` (`format: hub`, or `auto` when no such local path exists): read with
  `datasets.load_dataset(id, split=split)`, which honours `HF_HUB_OFFLINE` and the local cache.

Formats and why each is read the way it is:

- **jsonl** is read line by line with the standard library's `json`, not with `datasets`: `datasets` parses
  JSON lines in blocks through pyarrow, which reports a broken record by byte offset (or not at all when it
  coerces types across records) and infers one schema for the whole file. Here every record is parsed on its
  own, so each problem names its `path:line` (1-based) and one bad line does not hide the rest.
- **json** (an array of objects) is parsed element by element with `json.JSONDecoder.raw_decode`, which gives
  each record's start offset and so its line. A syntax error leaves no way to find where the next record
  starts, so it fails the file even with `on_bad_record: skip`. A `.json` file that does not start with `[`
  is read as JSON lines, as `datasets` does.
- **parquet**, saved datasets and hub datasets are read through `datasets` (parquet streaming, so nothing is
  copied into a cache); rows are typed columns, so the row number (0-based, as `datasets` and pyarrow index
  rows) is the useful location.

`maxSamples` stops reading after that many records (good or bad): the files after them are never opened, and
the rest of the file they end in is never parsed, so a malformed record beyond them cannot fail the job.

Bytes that are not UTF-8 make the record bad (jsonl, json); a missing, unreadable or corrupt file (a gzip
stream that breaks off), a folder without data files and a glob that matches nothing raise `DataFileError`
naming the path and the spec field.
"""

import glob
import gzip
import itertools
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubedistill.api.spec import DataFormat, DataSource
from kubedistill.runtime.data.errors import BadRecord, BadRecordError, DataFileError

_EXTENSIONS = {
    ".jsonl": DataFormat.JSONL,
    ".json": DataFormat.JSON,
    ".parquet": DataFormat.PARQUET,
    ".jsonl.gz": DataFormat.JSONL,
    ".json.gz": DataFormat.JSON,
}
_FILE_FORMATS = (DataFormat.JSONL, DataFormat.JSON, DataFormat.PARQUET)
_GLOB = re.compile(r"[*?\[]")
# `save_to_disk` writes `state.json` beside a Dataset's Arrow files, `dataset_dict.json` above a
# DatasetDict's.
_SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")
# A hub id is `name` or `owner/name`; a path that starts like a local one (or names a data file) is never
# tried on the hub.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Record:
    """One JSON object from a data file."""

    source: str
    """`path:line` (jsonl, json) or `path:row N` (parquet)."""
    fields: Mapping[str, Any]


def data_format(source: DataSource, field: str, path: str | None = None) -> DataFormat:
    """The format of the file `path` (default: `source.path`): as set, or by its extension when `auto`."""
    path = source.path if path is None else path
    if source.format in _FILE_FORMATS:
        return source.format
    found = _extension_format(path)
    if found is None:
        raise DataFileError(
            f"{field}.format: cannot tell the format of {path!r} from its extension "
            f"(known: {', '.join(_EXTENSIONS)}); set format to jsonl, json or parquet"
        )
    return found


def _extension_format(path: str) -> DataFormat | None:
    name = Path(path).name.lower()
    return next((found for suffix, found in _EXTENSIONS.items() if name.endswith(suffix)), None)


@dataclass
class BytesRead:
    """How far `read_records` got through a source's files, in bytes as stored (compressed, for `.gz`): what
    a long preparation's ETA is estimated from. Plain JSON lines count line by line, other files once read."""

    total: int
    done: int = 0


def bytes_to_read(source: DataSource, field: str = "spec.data.train") -> BytesRead | None:
    """The size of the files `source` reads; None for what `datasets` reads (no files of its own)."""
    files = data_files(source, field)
    return None if files is None else BytesRead(sum(os.path.getsize(file) for file in files))


def read_records(
    source: DataSource, field: str = "spec.data.train", read: BytesRead | None = None
) -> Iterator[Record | BadRecord]:
    """Records of `source` in order (file by file), the first `source.maxSamples` of them where it is set;
    records that cannot be read come as `BadRecord`s.

    `field` is the spec path of `source` (`spec.data.train`, `spec.data.eval`, `spec.data.mixture[i]`), named
    in errors. Problems with the source as a whole (an unknown format, a folder without data files) are
    raised here, before the first record is read. `read`: counts the bytes read (`bytes_to_read`).
    """
    files = data_files(source, field)
    if files is None:
        records = _read_hub(source, field) if _on_hub(source) else _read_saved(source, field)
    else:
        formats = [data_format(source, field, file) for file in files]
        records = itertools.chain.from_iterable(
            _counted(file, format, field, read) for file, format in zip(files, formats, strict=True)
        )
    return records if source.max_samples is None else itertools.islice(records, source.max_samples)


def data_files(source: DataSource, field: str = "spec.data.train") -> list[str] | None:
    """The files `source` reads, in order; None for a hub dataset or one saved with `save_to_disk`, which
    `datasets` reads. Raises `DataFileError` as `read_records` does."""
    path = Path(source.path)
    if _on_hub(source):
        return None
    if path.is_dir() and any((path / marker).is_file() for marker in _SAVED_DATASET_MARKERS):
        return None
    if path.is_dir() and source.format != DataFormat.AUTO and source.format not in _FILE_FORMATS:
        raise DataFileError(f"{field}.format: {source.format} cannot read the folder {source.path!r}")
    if path.is_dir():
        files = _files_in(path, source, field)
    elif _GLOB.search(source.path) and not path.exists():
        files = _files_matching(source, field)
    elif not path.exists():
        raise DataFileError(f"{field}.path: cannot read {source.path!r}: No such file or directory")
    else:
        files = [source.path]
    return files


def _on_hub(source: DataSource) -> bool:
    return source.format == DataFormat.HUB or (source.format == DataFormat.AUTO and _is_hub_id(source))


def _is_hub_id(source: DataSource) -> bool:
    if source.split is None or os.path.exists(source.path) or _extension_format(source.path) is not None:
        return False
    return bool(_HUB_ID.match(source.path))


def _files_in(folder: Path, source: DataSource, field: str) -> list[str]:
    files = sorted(str(path) for path in folder.rglob("*") if path.is_file() and _is_data_file(path, source))
    if not files:
        wanted = ", ".join(s for s, f in _EXTENSIONS.items() if source.format in (DataFormat.AUTO, f))
        raise DataFileError(f"{field}.path: the folder {source.path!r} holds no data files ({wanted})")
    return files


def _files_matching(source: DataSource, field: str) -> list[str]:
    files = sorted(path for path in glob.glob(source.path, recursive=True) if os.path.isfile(path))
    if not files:
        raise DataFileError(f"{field}.path: no file matches {source.path!r}")
    return files


def _is_data_file(path: Path, source: DataSource) -> bool:
    found = _extension_format(str(path))
    return found is not None and source.format in (DataFormat.AUTO, found)


def _unreadable(path: str, field: str, error: Exception) -> DataFileError:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return DataFileError(f"{field}.path: cannot read {path!r}: {reason}")


def _read_bytes(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise _unreadable(path, field, error) from error


def _read_bytes_of(path: str, field: str) -> bytes:
    raw = _read_bytes(path, field)
    if not _gzipped(path):
        return raw
    try:
        return gzip.decompress(raw)
    except _GZIP_ERRORS as error:
        raise _corrupt(path, field, error) from error


def _gzipped(path: str) -> bool:
    return path.lower().endswith(".gz")


def _corrupt(path: str, field: str, error: Exception, after_line: int | None = None) -> DataFileError:
    where = f" after line {after_line}" if after_line else ""
    return DataFileError(f"{field}.path: cannot read {path!r}: the gzip data is corrupt{where} ({error})")


def _counted(
    path: str, format: DataFormat, field: str, read: BytesRead | None
) -> Iterator[Record | BadRecord]:
    if read is None:
        yield from _READERS[format](path, field)
        return
    before = read.done
    if format == DataFormat.JSONL and not _gzipped(path):
        yield from _read_jsonl(path, field, read)
    else:
        yield from _READERS[format](path, field)
    read.done = before + os.path.getsize(path)


def _read_jsonl(path: str, field: str, read: BytesRead | None = None) -> Iterator[Record | BadRecord]:
    lines = 0
    try:
        with (gzip.open if _gzipped(path) else open)(path, "rb") as file:
            for number, raw in enumerate(file, start=1):
                lines = number
                if read is not None:
                    read.done += len(raw)
                yield from _parse_lines(path, [(number, raw)])
    except _GZIP_ERRORS as error:
        raise _corrupt(path, field, error, lines) from error
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
    raw = _read_bytes_of(path, field)
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
        yield from _rows(path, datasets.IterableDataset.from_parquet(path))
    except (OSError, pyarrow.ArrowException) as error:
        raise _unreadable(path, field, error) from error


def _read_saved(source: DataSource, field: str) -> Iterator[Record | BadRecord]:
    import datasets

    try:
        saved = datasets.load_from_disk(source.path)
    except (OSError, ValueError) as error:
        raise _unreadable(source.path, field, error) from error
    name = source.path
    if isinstance(saved, datasets.DatasetDict):
        if source.split not in saved:
            splits = ", ".join(saved)
            raise DataFileError(
                f"{field}.split: {source.path!r} is a DatasetDict with the splits {splits}; set split to one "
                f"of them (got {source.split!r})"
            )
        saved, name = saved[source.split], f"{source.path}[{source.split}]"
    return _rows(name, saved)


def _read_hub(source: DataSource, field: str) -> Iterator[Record | BadRecord]:
    import datasets

    if source.split is None:
        raise DataFileError(f"{field}.split: required to read the hub dataset {source.path!r}")
    try:
        rows = datasets.load_dataset(source.path, split=source.split)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        offline = datasets.config.HF_HUB_OFFLINE or datasets.config.HF_DATASETS_OFFLINE
        hint = "; HF_HUB_OFFLINE is set, so only the local cache was looked in" if offline else ""
        raise DataFileError(
            f"{field}.path: cannot load the hub dataset {source.path!r} (split {source.split!r}): "
            f"{str(error).strip() or type(error).__name__}{hint}"
        ) from error
    return _rows(f"{source.path}[{source.split}]", rows)


def _rows(name: str, rows: Iterable[Mapping[str, Any]]) -> Iterator[Record]:
    for number, row in enumerate(rows):
        yield Record(f"{name}:row {number}", row)


_READERS = {DataFormat.JSONL: _read_jsonl, DataFormat.JSON: _read_json, DataFormat.PARQUET: _read_parquet}


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
