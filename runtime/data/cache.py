"""Prepared samples kept on the job's checkpoint volume, so that a restarted or retried job maps them instead
of tokenising every record again (hours for a large set, while every GPU waits).

A prepared set is a folder `<field>-<key>` under the cache folder: one `.npy` file per sequence field with
every sample's sequence end to end, the offsets where each sample's starts, and `records.pkl` with the rest
(sources, prompt lengths, truncation notes, bad records). It is read back memory-mapped: the samples are
views into the files, so the page cache, not the driver's heap, holds the tokens.

The key covers everything that shapes the samples: each data file's path, size and modification time (a
changed or replaced file gets a new key), both tokenizers (their full definition and chat template), the
data settings, the source's settings, the mode and whether the teacher tokenises on its own, and `FORMAT`,
raised whenever preparation changes what it produces. A folder is written under a temporary name and renamed
when complete, so a job killed mid-write leaves no half set behind.

The set also keeps the hash of its samples that resume's origin check compares (`samples_sha256`): a restarted
job reads it with the set instead of hashing every token again. The key alone cannot stand in for it: a file
moved or touched without a change reads the same records, and may be resumed from (resume.py's
`MAY_CHANGE`), but gets a new key.
"""

import glob
import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from kubedistill.api.spec import DataSource, DataSpec, Mode
from kubedistill.runtime.data.errors import BadRecord
from kubedistill.runtime.data.reasoning import UnrenderedReasoning
from kubedistill.runtime.data.records import data_files
from kubedistill.runtime.data.sample import SEQUENCES, Sample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FORMAT = 1
CACHE_FOLDER = "prepared"
"""The cache's folder within the job's checkpoint folder."""
_RECORDS = "records.pkl"


@dataclass(frozen=True)
class Prepared:
    samples: list[Sample]
    bad_records: list[BadRecord]
    reasoning: UnrenderedReasoning | None
    """What the source's preparation counted of reasoning the chat template leaves out, to warn again."""
    sha256: str | None = None
    """`samples_sha256(samples)`, when the set was kept (a set kept before it was recorded has none)."""


def cache_key(
    source: DataSource,
    data: DataSpec,
    *,
    mode: Mode,
    field: str,
    tokenizer: "PreTrainedTokenizerBase",
    teacher_tokenizer: "PreTrainedTokenizerBase",
    cross_tokenizer: bool,
    sparse_targets: bool = False,
) -> str | None:
    """The prepared set's key; None for sources read through `datasets` (hub or saved datasets), which
    have no files of their own to name."""
    files = data_files(source, field)
    if files is None:
        return None
    settings = {
        "format": FORMAT,
        "field": field,
        # A mixture part's weight picks among its samples, it does not shape them: re-weighting keeps the set.
        "source": source.model_dump(mode="json", exclude={"weight"}),
        "data": data.model_dump(mode="json", exclude={"train", "eval", "mixture"}),
        "mode": mode.value,
        "cross_tokenizer": cross_tokenizer,
        "files": [_identity(file) for file in files],
        # Named only when set, so the sets prepared before sparse KD keep their keys.
        **({"sparse_targets": True} if sparse_targets else {}),
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for each in (tokenizer, teacher_tokenizer):
        digest.update(each.backend_tokenizer.to_str().encode())
        digest.update(repr((each.chat_template, each.bos_token, each.eos_token)).encode())
    if data.chat_template is not None and Path(data.chat_template).is_file():
        # The settings name spec.data.chatTemplate's file; what renders the chats is its text. A file that
        # is not there is reported by the preparation, naming the field.
        digest.update(Path(data.chat_template).read_bytes())
    return digest.hexdigest()[:32]


def _identity(file: str) -> tuple[str, int, int]:
    status = os.stat(file)
    return os.path.abspath(file), status.st_size, status.st_mtime_ns


def read_prepared(folder: Path, field: str, key: str) -> Prepared | None:
    """The set prepared under `key`, its sequences memory-mapped; None when there is none."""
    path = folder / f"{field}-{key}"
    if not (path / _RECORDS).is_file():
        return None
    with (path / _RECORDS).open("rb") as file:
        records = pickle.load(file)
    columns = {
        name: (np.load(path / f"{name}.npy", mmap_mode="r"), np.load(path / f"{name}.offsets.npy"))
        for name in records["fields"]
    }
    samples = []
    betas = records.get("betas") or [None] * len(records["samples"])
    for i, (source, prompt_length, truncation) in enumerate(records["samples"]):
        views = {name: values[offsets[i] : offsets[i + 1]] for name, (values, offsets) in columns.items()}
        samples.append(
            Sample(source=source, prompt_length=prompt_length, truncation=truncation, beta=betas[i], **views)  # type: ignore[arg-type]
        )
    return Prepared(samples, records["bad_records"], records["reasoning"], records.get("sha256"))


def write_prepared(folder: Path, field: str, key: str, prepared: Prepared) -> bool:
    """Keep the prepared set under `key`, replacing the field's earlier sets; False (nothing written) for
    samples with images, which the format does not hold."""
    samples = prepared.samples
    if any(sample.images is not None for sample in samples):
        return False
    present = [name for name in SEQUENCES if getattr(samples[0], name) is not None]
    if any(
        (getattr(sample, name) is not None) != (name in present) for sample in samples for name in SEQUENCES
    ):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{field}-{key}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in present:
        parts = [getattr(sample, name) for sample in samples]
        np.save(staging / f"{name}.npy", np.concatenate(parts))
        np.save(staging / f"{name}.offsets.npy", _offsets(parts))
    records: dict[str, Any] = {
        "fields": present,
        "samples": [(s.source, s.prompt_length, s.truncation) for s in samples],
        "bad_records": prepared.bad_records,
        "reasoning": prepared.reasoning,
        "sha256": samples_sha256(samples),
    }
    if any(sample.beta is not None for sample in samples):
        # Only where present, so that the sets prepared before per-pair betas read as they were.
        records["betas"] = [sample.beta for sample in samples]
    with (staging / _RECORDS).open("wb") as file:
        pickle.dump(records, file, protocol=pickle.HIGHEST_PROTOCOL)
    # A mixture's fields hold brackets (`spec.data.mixture[0]`), which glob reads as a character class.
    for earlier in folder.glob(f"{glob.escape(field)}-*"):
        shutil.rmtree(earlier, ignore_errors=True)
    os.replace(staging, folder / f"{field}-{key}")
    return True


def _offsets(parts: list[npt.NDArray[Any]]) -> npt.NDArray[np.int64]:
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(part) for part in parts], out=offsets[1:])
    return offsets


def samples_sha256(samples: Iterable[Sample]) -> str:
    """The hash of the samples' tokens and masks in order: what resume's origin check compares
    (`resume.data_identity`), wherever the files lie."""
    digest = hashlib.sha256()
    for sample in samples:
        # int64 and one byte a mask entry: the bytes checkpoints recorded when samples were tuples.
        for tokens in (sample.input_ids, sample.teacher_input_ids):
            digest.update(b"" if tokens is None else tokens.astype(np.int64).tobytes())
            digest.update(b"|")
        for mask in (sample.target_mask, sample.teacher_target_mask):
            digest.update(b"" if mask is None else mask.tobytes())
            digest.update(b"|")
        # Sparse KD's stored targets are the data too; only hashed where present, so other sets keep theirs.
        for targets in (sample.teacher_top_ids, sample.teacher_top_logprobs):
            if targets is not None:
                digest.update(np.ascontiguousarray(targets).tobytes())
                digest.update(b"|")
        if sample.beta is not None:
            # A pair's own beta (CogPO) shapes its loss; hashed where present, so other sets keep theirs.
            digest.update(f"beta={sample.beta!r}|".encode())
    return digest.hexdigest()
