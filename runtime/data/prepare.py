"""Records -> samples across the machine's cores, in file order, with progress in the log.

A real set holds 10^5-10^7 records, and tokenising is CPU-bound Python around a Rust tokenizer, so one
process tokenises at one core's pace. The records are read here, in order, and handed out in chunks to worker
processes that each hold a copy of the `SampleBuilder`; results come back in the order sent, so samples, bad
records (with their `path:line`) and truncation notes are exactly what building one record after another
gives.

Workers start with `spawn`: the caller (the Ray driver) has threads, which `fork` would copy mid-lock. A
spawned worker imports transformers first (a second or two), so a source of at most `SERIAL_RECORDS` records
(tests, demos) is built here without any; a larger one goes wholly to the workers, and this process only
reads, hands out and collects. At most `IN_FLIGHT` chunks per worker are out at a time, so memory stays
bounded whatever the file's size.
"""

import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from itertools import chain, islice
from typing import TYPE_CHECKING, TypeVar

from kubedistill.runtime.data.errors import BadRecord, BadRecordError
from kubedistill.runtime.data.reasoning import UnrenderedReasoning
from kubedistill.runtime.data.records import BytesRead, Record
from kubedistill.runtime.data.sample import Sample, packed
from kubedistill.runtime.data.tokenize import SampleBuilder

if TYPE_CHECKING:
    import ray

log = logging.getLogger(__name__)

SERIAL_RECORDS = 2048
CHUNK_RECORDS = 64
PACK_RECORDS = 256
IN_FLIGHT = 4
PROGRESS_SECONDS = 10.0
PUBLISH_SECONDS = 1.0
Built = Sample | BadRecord

_worker_build: SampleBuilder | None = None
_ray_builders: dict[str, SampleBuilder] = {}
"""A Ray worker process's builder, by its object's id (`_build_chunk_on_ray`)."""


@dataclass(frozen=True)
class PrepareProgress:
    """Where a source's preparation stands: what the log line says and /metrics carries."""

    field: str
    records: int
    tokens: int
    seconds: float
    read_bytes: int | None = None
    """Of the source's files (`records.BytesRead`); None for a source `datasets` reads."""
    total_bytes: int | None = None

    @property
    def records_per_second(self) -> float:
        return self.records / max(self.seconds, 1e-9)

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the pace so far, by the share of the files' bytes read (records vary in length,
        bytes track tokens); None before the first is read and for a source without files of its own."""
        if not self.read_bytes or self.total_bytes is None:
            return None
        return self.seconds * max(self.total_bytes - self.read_bytes, 0) / self.read_bytes


def available_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0))


def build_samples(
    build: SampleBuilder,
    records: Iterable[Record | BadRecord],
    processes: int,
    *,
    serial_records: int = SERIAL_RECORDS,
    chunk_records: int = CHUNK_RECORDS,
    read: BytesRead | None = None,
    on_progress: Callable[[PrepareProgress], None] | None = None,
    on_ray: bool = False,
) -> Iterator[Built]:
    """Each record's sample, or the `BadRecord` it is, in the records' order; `processes` > 1 builds on that
    many worker processes once the source holds more than `serial_records` records; `on_ray`, on Ray tasks
    over the cluster this process is attached to instead. `read`: the bytes `records` has read of its files,
    for the time left; `on_progress`: called with the progress every `PUBLISH_SECONDS` and at the end."""
    progress = _Progress(build.field, read, on_progress)
    records = iter(records)
    head = list(islice(records, serial_records + 1))
    if on_ray and len(head) > serial_records:
        yield from _packed_runs(_on_ray_tasks(build, chain(head, records), chunk_records, progress))
    elif processes <= 1 or len(head) <= serial_records:
        # Read as built, not all first: the records of a large file held at once would outweigh its samples.
        yield from _packed_runs(
            built for record in chain(head, records) for built in progress.count(_build_one(build, record))
        )
    else:
        yield from _packed_runs(_on_workers(build, chain(head, records), processes, chunk_records, progress))
    progress.finish()


def _on_workers(
    build: SampleBuilder,
    records: Iterator[Record | BadRecord],
    processes: int,
    chunk_records: int,
    progress: "_Progress",
) -> Iterator[Built]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, context, initializer=_start_worker, initargs=(build,)) as pool:
        yield from _in_order(
            build,
            records,
            chunk_records,
            IN_FLIGHT * processes,
            lambda chunk: pool.submit(_build_chunk, chunk),
            Future.result,
            progress,
        )


def _on_ray_tasks(
    build: SampleBuilder, records: Iterator[Record | BadRecord], chunk_records: int, progress: "_Progress"
) -> Iterator[Built]:
    """The chunks on Ray tasks, which Ray spreads over the cluster's nodes (a set beyond one node's cores);
    at most `IN_FLIGHT` chunks a CPU of the cluster are out at a time. The records are still read here, so
    the workers need no access to the data files, and results are taken in the order sent."""
    import ray

    builder = ray.put(build)
    task = ray.remote(_build_chunk_on_ray)
    cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    yield from _in_order(
        build,
        records,
        chunk_records,
        IN_FLIGHT * cpus,
        lambda chunk: task.remote([builder], chunk),
        ray.get,
        progress,
    )


Chunk = tuple[list[list[Built]], UnrenderedReasoning | None]
Handle = TypeVar("Handle")


def _in_order(
    build: SampleBuilder,
    records: Iterator[Record | BadRecord],
    chunk_records: int,
    in_flight: int,
    start: Callable[[list[Record | BadRecord]], Handle],
    result: Callable[[Handle], Chunk],
    progress: "_Progress",
) -> Iterator[Built]:
    """Chunks of `records` started (`start`) up to `in_flight` ahead, their results taken in the order
    sent: what one record after another gives, whichever chunk finishes first."""
    pending: deque[Handle] = deque()

    def submit() -> bool:
        chunk = list(islice(records, chunk_records))
        if chunk:
            pending.append(start(chunk))
        return bool(chunk)

    while len(pending) < in_flight and submit():
        pass
    while pending:
        done, reasoning = result(pending.popleft())
        submit()
        if build.reasoning is not None and reasoning is not None:
            _add_reasoning(build.reasoning, reasoning)
        for each in done:
            yield from progress.count(each)


def _packed_runs(built: Iterable[Built]) -> Iterator[Built]:
    """The same, with the samples of every `PACK_RECORDS` records packed (`sample.packed`): the small arrays
    a run was built or received in are freed before the next run, which reuses their memory."""
    run: list[Built] = []
    for each in chain(built, [None]):
        if each is not None:
            run.append(each)
        if run and (each is None or len(run) == PACK_RECORDS):
            samples = iter(packed([s for s in run if isinstance(s, Sample)]))
            yield from (next(samples) if isinstance(s, Sample) else s for s in run)
            run = []


def _build_one(build: SampleBuilder, record: Record | BadRecord) -> list[Built]:
    """The record's samples (a chat trained in parts makes several), or the `BadRecord` it is."""
    if isinstance(record, BadRecord):
        return [record]
    try:
        return list(build.samples(record))
    except BadRecordError as error:
        return [error.record]


def _start_worker(build: SampleBuilder) -> None:
    global _worker_build
    _worker_build = build


def _build_chunk(records: list[Record | BadRecord]) -> Chunk:
    assert _worker_build is not None, "the pool's initializer sets the builder"
    return _chunk_of(_worker_build, records)


def _build_chunk_on_ray(
    builder: "list[ray.ObjectRef[SampleBuilder]]", records: list[Record | BadRecord]
) -> Chunk:
    """A Ray task's chunk. The builder's ref comes in a list, which Ray hands over unresolved: a worker
    process unpickles the builder (its tokenizers, megabytes for a real model) once, not with every chunk."""
    import ray

    key = builder[0].hex()
    if key not in _ray_builders:
        _ray_builders.clear()
        _ray_builders[key] = ray.get(builder[0])
    return _chunk_of(_ray_builders[key], records)


def ray_cluster_nodes() -> int:
    """The alive nodes of the Ray cluster this process is attached to; 0 when it is attached to none."""
    if "ray" not in sys.modules:  # never attached: no need to import it
        return 0
    import ray

    return sum(1 for node in ray.nodes() if node["Alive"]) if ray.is_initialized() else 0


def _chunk_of(build: SampleBuilder, records: list[Record | BadRecord]) -> Chunk:
    """The chunk's samples, and what the chunk alone adds to the builder's count of unrendered reasoning
    (a worker's copy of the count would never reach the caller)."""
    reasoning = build.reasoning
    if reasoning is not None:
        build = replace(build, reasoning=UnrenderedReasoning(reasoning.spec_path, reasoning.template))
    return [_build_one(build, record) for record in records], build.reasoning


def _add_reasoning(total: UnrenderedReasoning, chunk: UnrenderedReasoning) -> None:
    total.records += chunk.records
    total.keys |= chunk.keys
    total.first = total.first or chunk.first


class _Progress:
    """Records and tokens a second, and the time left, in the log every `PROGRESS_SECONDS`, so a long
    preparation shows it is working, not stuck, and once more at its end (a preparation done within the
    interval logs nothing); handed to `on_progress` (/metrics) every `PUBLISH_SECONDS` and at the end."""

    def __init__(
        self, field: str, read: BytesRead | None, on_progress: Callable[[PrepareProgress], None] | None
    ) -> None:
        self.field = field
        self.read = read
        self.on_progress = on_progress
        self.started = self.logged = self.published = time.monotonic()
        self.records = self.tokens = 0

    def count(self, built: list[Built]) -> list[Built]:
        """What one record became."""
        self.records += 1
        self.tokens += sum(len(each.input_ids) for each in built if isinstance(each, Sample))
        now = time.monotonic()
        if self.on_progress is not None and now - self.published >= PUBLISH_SECONDS:
            self.published = now
            self.on_progress(self.now(now))
        if now - self.logged >= PROGRESS_SECONDS:
            self.logged = now
            self._log("preparing", self.now(now))
        return built

    def finish(self) -> None:
        done = self.now(time.monotonic())
        if self.on_progress is not None:
            self.on_progress(done)
        if self.logged > self.started:
            self._log("prepared", done)

    def now(self, now: float) -> PrepareProgress:
        read = self.read
        return PrepareProgress(
            self.field,
            self.records,
            self.tokens,
            now - self.started,
            None if read is None else read.done,
            None if read is None else read.total,
        )

    def _log(self, what: str, progress: PrepareProgress) -> None:
        seconds = max(progress.seconds, 1e-9)
        eta = progress.eta_seconds
        log.info(
            "%s: %s %d records (%d tokens) in %.0f s: %.0f records/s, %.0f tokens/s%s",
            self.field,
            what,
            progress.records,
            progress.tokens,
            seconds,
            progress.records_per_second,
            progress.tokens / seconds,
            "" if eta is None or what == "prepared" else _left(progress, eta),
        )


def _left(progress: PrepareProgress, eta: float) -> str:
    share = (progress.read_bytes or 0) / max(progress.total_bytes or 0, 1)
    return f"; {share:.0%} of the files read, about {eta:.0f} s left"
