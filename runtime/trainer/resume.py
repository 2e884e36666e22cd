"""What a checkpoint was made from, and whether a job may go on from it.

Every checkpoint records the spec it was made from and the identity of the training data it read (the
record count and a hash of the tokenised records). A re-run resumes only if nothing that shapes the trained
model differs; the fields in `MAY_CHANGE` say how long to train, how often to evaluate, log and checkpoint,
where to write, and how the work is laid out on the machines, and they may change between runs. Anything
else changed is refused, naming each field, before Ray starts: resuming would silently keep the old
schedule, or fail deep in the checkpoint loader (another student model's shapes).
"""

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kubedistill.api.job import DistillationJob
from kubedistill.api.status import RESUME_REFUSED_WORDS
from kubedistill.runtime.data.cache import samples_sha256
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.trainer.checkpoints import ORIGIN, Checkpoint
from kubedistill.runtime.trainer.report import SUMMARY_FILE

MAY_CHANGE: tuple[str, ...] = (
    "spec.training.maxSteps",
    "spec.training.epochs",
    "spec.training.evalEverySteps",
    "spec.training.logEverySteps",
    "spec.training.onNonFinite",
    "spec.training.microBatchSize",
    "spec.training.maxTokensPerDevice",
    "spec.training.packing",
    "spec.data.eval",
    "spec.data.onBadRecord",
    "spec.data.train",
    "spec.checkpoint",
    "spec.output",
    "spec.cluster",
    "spec.suspend",
    "spec.backoffLimit",
    "spec.activeDeadlineSeconds",
    "spec.preRunningDeadlineSeconds",
    "spec.ttlSecondsAfterFinished",
    "spec.teacher.backend",
    "spec.teacher.replicas",
    "spec.teacher.tensorParallel",
    "spec.teacher.pipelineParallel",
    "spec.teacher.expertParallel",
    "spec.teacher.gpusPerReplica",
    "spec.teacher.nodesPerReplica",
    "spec.teacher.memFractionStatic",
    "spec.teacher.stepsPerWake",
    "spec.student.replicas",
    "spec.student.fsdpShardSize",
    "spec.student.cpuOffload",
    "spec.student.reshardAfterForward",
    "spec.student.gradientCheckpointing",
    "spec.student.attention",
    "spec.student.ligerKernel",
    "spec.rollout.backend",
    "spec.rollout.engines",
    "spec.rollout.tensorParallel",
    "spec.rollout.memFractionStatic",
    "spec.distillation.lossChunkSize",
)
"""Spec fields (and sections) a job may change and still resume from its checkpoint.

`maxSteps` and `epochs` lay the learning-rate schedule out again for the new length, from the step reached.
The micro-batch size, the layout (replicas, parallelism, backends) and the kernels (attention, Liger) change
how a global batch is computed, not what it sums to; so does how many steps one wake of a colocated teacher
scores. `spec.data.train` may point elsewhere, in another format, as long as the records read are the same
ones: the data's own identity is compared instead."""


@dataclass(frozen=True)
class DataIdentity:
    records: int
    sha256: str


@dataclass(frozen=True)
class Origin:
    """What a checkpoint was made from."""

    spec: dict[str, Any]
    """The spec as the manifest spells it (camelCase), flattened to dotted field paths."""
    data: DataIdentity
    job: str | None = None
    """The job's name: a checkpoint belongs to one job. None in checkpoints that did not record it."""
    chat_clock: str | None = None
    """The moment (ISO 8601) the chat templates saw when the records were rendered: a template that writes
    today's date into prompts renders the same tokens on a later day (`runtime/models/chat_clock.py`)."""
    defaulted: frozenset[str] = field(default=frozenset(), compare=False)
    """The fields of `spec` the manifest leaves to their defaults (not kept in the checkpoint): where a
    checkpoint of an earlier version lacks such a field, the field is newer than the checkpoint, and its
    default is what that version did."""

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "data": asdict(self.data), "job": self.job, "chat_clock": self.chat_clock}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "Origin":
        return cls(
            spec=dict(value["spec"]),
            data=DataIdentity(**value["data"]),
            job=value.get("job"),
            chat_clock=value.get("chat_clock"),
        )


class ResumeRefused(Exception):
    """The checkpoint was made from another job: its message is the one line a user (or the operator) sees."""


def origin_of(
    job: DistillationJob,
    train: Iterable[Sample],
    chat_clock: datetime | None = None,
    *,
    train_sha256: str | None = None,
) -> Origin:
    spec = dict(_flatten(job.spec.model_dump(mode="json", by_alias=True), "spec"))
    written = [
        key
        for key, _ in _flatten(job.spec.model_dump(mode="json", by_alias=True, exclude_unset=True), "spec")
    ]
    return Origin(
        spec=spec,
        data=data_identity(train, train_sha256),
        job=job.name,
        chat_clock=chat_clock.isoformat() if chat_clock else None,
        defaulted=frozenset(key for key in spec if not any(_within(key, set_key) for set_key in written)),
    )


def _within(key: str, written: str) -> bool:
    """Whether the flattened `key` is `written` or lies inside it (a section the manifest wrote whole)."""
    return key == written or key.startswith(f"{written}.")


def data_identity(samples: Iterable[Sample], sha256: str | None = None) -> DataIdentity:
    """The tokenised training records in order: what the student learns from, wherever the files lie.
    `sha256`: their hash as the prepared set keeps it (`LoadedData.sha256`), which spares hashing every
    token again (0.13-0.19 s per 16.8 M tokens) on a restart; it is the value hashing them gives, so the
    checkpoints of earlier versions compare as they always did."""
    samples = list(samples)
    return DataIdentity(len(samples), samples_sha256(samples) if sha256 is None else sha256)


def changes(saved: Origin, current: Origin) -> list[str]:
    """`field old -> new` for each difference that forbids resuming; empty when the job may go on."""
    found = []
    data_differs = saved.data != current.data
    for key in sorted(saved.spec.keys() | current.spec.keys()):
        old, new = saved.spec.get(key, _UNSET), current.spec.get(key, _UNSET)
        if old == new:
            continue
        # A field this version added: a checkpoint written before it existed did what its default does.
        if old is _UNSET and key in current.defaulted:
            continue
        # The train source may move; named only when the records read changed too.
        if _may_change(key) and not (data_differs and key.startswith("spec.data.train.")):
            continue
        found.append(f"{key} {_show(old)} -> {_show(new)}")
    if data_differs:
        saved_data, current_data = saved.data, current.data
        if saved_data.records != current_data.records:
            found.append(f"training data {saved_data.records} -> {current_data.records} records")
        else:
            found.append(f"training data: other records ({saved_data.records} either way)")
    return found


def check_resumable(checkpoint: Checkpoint, current: Origin) -> None:
    """`ResumeRefused` unless `checkpoint` was made by this job (its name), from a spec that differs from
    this one in `MAY_CHANGE` fields only."""
    owner = Origin.from_json(checkpoint.origin).job if checkpoint.origin is not None else None
    if owner is not None and owner != current.job:
        # Two jobs given one spec.checkpoint.path: going on from the other's step would train it under this
        # job's name (or find it finished and train nothing).
        raise ResumeRefused(
            f"spec.checkpoint.path: {RESUME_REFUSED_WORDS} {checkpoint.path} (step {checkpoint.state.step}): "
            f"it is a checkpoint of job {owner}, not of this job {current.job} (the two jobs share the "
            "folder). To start this job from it: spec.checkpoint.resumeFrom: "
            f"{checkpoint.path}, with a spec.checkpoint.path of this job's own; to start afresh: a "
            "spec.checkpoint.path of this job's own"
        )
    changed = (
        changes(Origin.from_json(checkpoint.origin), current)
        if checkpoint.origin is not None
        else [f"unknown: the checkpoint has no {ORIGIN} (written before KubeDistill recorded it)"]
    )
    if changed:
        raise ResumeRefused(refusal(str(checkpoint.path), checkpoint.state.step, changed))


def check_start(start: Checkpoint | None, asked: str, current: Origin, own_folder: str | None) -> Checkpoint:
    """The checkpoint spec.checkpoint.resumeFrom (`asked`) names, found at `start`; `ResumeRefused` where
    none is there, where it lies among the checkpoints this job writes, or where its student is another
    model (whose shapes the checkpoint loader would refuse deep inside)."""
    field = "spec.checkpoint.resumeFrom"
    if start is None:
        raise ResumeRefused(
            f"{field}: no checkpoint at '{asked}' (a step-NNNNNNNN folder, or a checkpoint folder holding "
            "one)"
        )
    where = start.path.resolve()
    if own_folder is not None and Path(own_folder).resolve() in (where, *where.parents):
        raise ResumeRefused(
            f"{field}: {start.path} lies in spec.checkpoint.path {own_folder}, where this job writes its own "
            "checkpoints among those it starts from: give this job a spec.checkpoint.path of its own"
        )
    if start.origin is not None:
        key = "spec.student.model"
        theirs, ours = Origin.from_json(start.origin).spec.get(key), current.spec.get(key)
        if theirs != ours:
            raise ResumeRefused(
                f"{field}: {start.path} holds a student of {_show(theirs)}, not {key} {_show(ours)}: "
                "a checkpoint gives its weights to the same model only"
            )
    return start


def is_finished(checkpoint: Checkpoint | None, stop_step: int, output_dir: Path, job_name: str) -> bool:
    """Trained to `stop_step` and the output written: a re-run has nothing to do."""
    if checkpoint is None or checkpoint.state.step < stop_step:
        return False
    summary_file = output_dir / SUMMARY_FILE
    if not summary_file.is_file():
        return False
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    # An interrupted run's summary is written before its export: that output is not complete.
    return (
        summary.get("job") == job_name
        and summary.get("steps") == checkpoint.state.step
        and not summary.get("interrupted")
    )


def refusal(checkpoint: str, step: int, changed: list[str]) -> str:
    return (
        f"spec.checkpoint.path: {RESUME_REFUSED_WORDS} {checkpoint} (step {step}): the job changed since: "
        f"{'; '.join(changed)}. To start afresh: `kubedistill run --restart` (moves the old checkpoints "
        "aside), or a new spec.checkpoint.path; to go on from its weights as changed (new data, say): "
        f"spec.checkpoint.resumeFrom: {checkpoint}, with a new spec.checkpoint.path; to resume, undo the "
        "changes"
    )


_UNSET = object()


def _may_change(key: str) -> bool:
    return any(key == field or key.startswith(field + ".") for field in MAY_CHANGE)


def _flatten(value: Any, prefix: str) -> Iterable[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}.{key}")
    else:
        yield prefix, value


def _show(value: Any) -> str:
    return "(unset)" if value is _UNSET else json.dumps(value)
