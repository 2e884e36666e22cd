"""A data source -> samples, applying `spec.data.onBadRecord`: fail on the first bad record, or skip each one
and hand it back so the trainer counts it (`kubedistill_bad_records_total`) and lists it in the summary.
Records shortened to fit the length limits are counted the same way (`kubedistill_truncated_records_total`)
and warned about once per source, naming the first; so are records whose assistant reasoning the chat
template leaves out of what is trained (`data.reasoning`)."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kubedistill.api.job import SpecError
from kubedistill.api.spec import DataSource, DataSpec, Mode, OnBadRecord
from kubedistill.runtime.data.alignment import same_vocabulary
from kubedistill.runtime.data.cache import Prepared, cache_key, read_prepared, write_prepared
from kubedistill.runtime.data.errors import BadRecord, BadRecordError, DataFileError
from kubedistill.runtime.data.images import IMAGE_PART_TYPES, ImageProcessing
from kubedistill.runtime.data.preference import paired
from kubedistill.runtime.data.prepare import PrepareProgress, available_cores, build_samples
from kubedistill.runtime.data.reasoning import UnrenderedReasoning
from kubedistill.runtime.data.records import Record, bytes_to_read, read_records
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.data.tokenize import SampleBuilder

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedData:
    samples: list[Sample]
    """In file order."""
    bad_records: list[BadRecord]
    """Records skipped under `onBadRecord: skip`, in file order; empty under `fail`."""
    key: str | None = None
    """The prepared set's cache key (`data.cache`) when a cache folder was given; None otherwise."""
    sha256: str | None = None
    """The samples' hash (`cache.samples_sha256`) as the prepared set keeps it: resume's data identity,
    without hashing every token again. None where no set was kept (no cache folder, images, a hub set)."""

    @property
    def truncated(self) -> list[Sample]:
        """Samples shortened to fit `spec.data.maxLength` / `promptMaxLength` (`Sample.truncation`: how)."""
        return [sample for sample in self.samples if sample.truncation]


def load_samples(
    source: DataSource,
    data: DataSpec,
    tokenizer: "PreTrainedTokenizerBase",
    *,
    mode: Mode,
    teacher_tokenizer: "PreTrainedTokenizerBase | None" = None,
    field: str = "spec.data.train",
    cross_tokenizer: bool = False,
    images: ImageProcessing | None = None,
    teacher_images: ImageProcessing | None = None,
    processes: int | None = None,
    cache: Path | None = None,
    on_progress: Callable[[PrepareProgress], None] | None = None,
    on_ray: bool = False,
    sparse_targets: bool = False,
) -> LoadedData:
    """Read and tokenise every record of `source` (`field` is its spec path, named in errors), or its first
    `maxSamples`; the log says how many were taken.

    `cross_tokenizer`: the algorithm matches tokens of different tokenizers, so a teacher tokenizer other
    than the student's (another vocabulary, or another chat template where one is applied) tokenises every
    record too. Without it, a teacher vocabulary other than the student's is refused.

    `images`: the student's image processing (`data.images.load_image_processing`), for a vision-language
    student; without it a record with an image raises `SpecError` naming `field`. `teacher_images`: the
    teacher's, when it has its own processor files (each record's images are checked to read the same).

    `processes`: how many worker processes tokenise a large source (`data.prepare`); None: one a core.
    `cache`: a folder (on the job's checkpoint volume) where the prepared set is kept and, on a later run
    with the same files and settings, read back instead (`data.cache`); sets with images are not kept.
    `on_progress`: called with the preparation's progress every second or so and at its end (/metrics).
    `on_ray`: a large source is tokenised by Ray tasks over the cluster this process is attached to, instead
    of by `processes` on this machine (a job on a cluster of several nodes).
    `sparse_targets`: every sample carries its record's `teacherLogprobs` (sparse KD); a record without
    them, or whose targets are not the tokens the teacher sampled, is bad.

    Raises `BadRecordError` for the first bad record under `onBadRecord: fail`, `DataFileError` when the
    file is unusable, holds no records, or holds only bad ones, and `SpecError` naming the spec field when
    the settings cannot work for any record.
    """
    teacher = teacher_tokenizer or tokenizer
    if not cross_tokenizer and not same_vocabulary(tokenizer, teacher):
        # A vision-language teacher's tokenizer has image tokens a text student's lacks: with pictures in
        # the data, the student, not the algorithm, is what cannot work.
        picture = None if images is not None else _first_image(source, field)
        if picture is not None:
            raise SpecError(
                field,
                f"{picture} has an image, but spec.student.model ({tokenizer.name_or_path}) has no image "
                "processor (preprocessor_config.json), whatever the teacher reads; use a vision-language "
                "student, or data without images",
            )
        raise SpecError(
            "spec.distillation.algorithm",
            "the teacher's tokenizer has another vocabulary than the student's, "
            "and the algorithm compares their logits token by token; use a cross-tokenizer algorithm "
            "(simpleCtkd or dskd)",
        )
    own_tokens = cross_tokenizer and not _same_tokens(tokenizer, teacher, data)
    key = None
    if cache is not None and images is None:
        key = cache_key(
            source,
            data,
            mode=mode,
            field=field,
            tokenizer=tokenizer,
            teacher_tokenizer=teacher,
            cross_tokenizer=own_tokens,
            sparse_targets=sparse_targets,
        )
    prepared = None if key is None or cache is None else read_prepared(cache, field, key)
    if prepared is not None:
        log.debug("%s: read %d prepared samples from %s", field, len(prepared.samples), cache)
    else:
        prepared = _prepare(
            source,
            data,
            tokenizer,
            teacher,
            mode,
            field,
            own_tokens,
            images,
            teacher_images,
            processes,
            on_progress,
            on_ray,
            sparse_targets,
        )
        if key is not None and cache is not None:
            try:
                if write_prepared(cache, field, key, prepared):
                    # Mapped rather than held, as a restarted job holds them: the tokens are then the page
                    # cache's to keep or drop, and the heap they were prepared in goes back to the system.
                    prepared = read_prepared(cache, field, key) or prepared
            except OSError as error:
                # The cache saves time on a later run; a volume without room for it must not fail this one.
                log.warning("%s: cannot keep the prepared samples in %s: %s", field, cache, error)
    samples, bad_records = prepared.samples, prepared.bad_records
    if mode == Mode.PREFERENCE:
        # Set here rather than kept in the prepared set: a pair's group is its index among the pairs.
        samples = paired(samples)
    records = records_of(samples)
    if source.max_samples is not None:
        _report_max_samples(source.max_samples, records + len(bad_records), field)
    loaded = LoadedData(samples, bad_records, key, prepared.sha256)
    if prepared.reasoning is not None:
        prepared.reasoning.warn(records)
    if loaded.truncated:
        first = loaded.truncated[0]
        log.warning(
            "%s: %d of %d records were shortened to fit spec.data.maxLength %d / promptMaxLength %d; "
            "the first: %s: %s",
            field,
            records_of(loaded.truncated),
            records,
            data.max_length,
            data.prompt_max_length,
            first.source,
            first.truncation,
        )
    return loaded


def records_of(samples: list[Sample]) -> int:
    """How many records `samples` (in file order) came from: a chat its template shows otherwise once later
    turns follow is trained in parts (`data.chat`), one sample each, all with the record's `path:line`."""
    return sum(1 for i, sample in enumerate(samples) if i == 0 or sample.source != samples[i - 1].source)


def _prepare(
    source: DataSource,
    data: DataSpec,
    tokenizer: "PreTrainedTokenizerBase",
    teacher: "PreTrainedTokenizerBase",
    mode: Mode,
    field: str,
    own_tokens: bool,
    images: ImageProcessing | None,
    teacher_images: ImageProcessing | None,
    processes: int | None,
    on_progress: Callable[[PrepareProgress], None] | None = None,
    on_ray: bool = False,
    sparse_targets: bool = False,
) -> Prepared:
    """Every record of `source` tokenised, on `processes` worker processes (`data.prepare`)."""
    reasoning = UnrenderedReasoning(field, tokenizer.name_or_path)
    build = SampleBuilder(
        source,
        data,
        tokenizer,
        mode,
        teacher,
        field,
        cross_tokenizer=own_tokens,
        images=images,
        teacher_images=teacher_images,
        reasoning=reasoning,
        sparse_targets=sparse_targets,
    )
    samples: list[Sample] = []
    bad_records: list[BadRecord] = []
    workers = available_cores() if processes is None else processes
    read = bytes_to_read(source, field)
    records = read_records(source, field, read)
    for built in build_samples(build, records, workers, read=read, on_progress=on_progress, on_ray=on_ray):
        if isinstance(built, Sample):
            samples.append(built)
        elif data.on_bad_record == OnBadRecord.FAIL:
            raise BadRecordError(built)
        else:
            bad_records.append(built)
    if not samples and not bad_records:
        raise DataFileError(f"{source.path}: the file holds no records ({field}.path)")
    if not samples:
        raise DataFileError(
            f"{source.path}: all {len(bad_records)} records are bad ({field}.path); "
            f"the first: {bad_records[0]}"
        )
    return Prepared(samples, bad_records, reasoning)


def _report_max_samples(max_samples: int, records: int, field: str) -> None:
    if records < max_samples:
        log.info("%s: read all %d records (maxSamples %d is more)", field, records, max_samples)
    else:
        log.info(
            "%s: took the first %d records (maxSamples); any after them were not read", field, max_samples
        )


def _first_image(source: DataSource, field: str) -> str | None:
    """Where the first chat record with an image is (`path:line`); None when no record has one."""
    for record in read_records(source, field):
        messages = record.fields.get(source.input_key) if isinstance(record, Record) else None
        for message in messages if isinstance(messages, list) else []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list) and any(
                isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES for part in content
            ):
                return record.source
    return None


def _same_tokens(
    student: "PreTrainedTokenizerBase", teacher: "PreTrainedTokenizerBase", data: DataSpec
) -> bool:
    """Whether the teacher would see exactly the student's tokens."""
    if not same_vocabulary(student, teacher):
        return False
    return not data.apply_chat_template or student.chat_template == teacher.chat_template
