"""Checkpoint directories on the driver's side: atomic commits, retention, and finding where to resume.

A checkpoint is written into `step-NNNNNNNN.tmp/` (every student rank's DCP shards and RNG state, then the
trainer's own state as `trainer.json` and what it was made from as `origin.json`) and only then renamed to
`step-NNNNNNNN/`. A rename is atomic on a POSIX file system, so a crash at any point leaves either the
previous checkpoint or the new one complete, never a half-written one that looks complete. Leftover `.tmp`
directories are ignored and cleaned up.
"""

import json
import re
import shutil
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path

from kubedistill.runtime.data.cache import CACHE_FOLDER

TRAINER_STATE = "trainer.json"
ORIGIN = "origin.json"
_COMMITTED = re.compile(r"^step-(\d{8})$")


@dataclass(frozen=True)
class TrainerState:
    """Where the trainer stands: enough to continue exactly where it stopped."""

    step: int
    """Optimizer steps done."""
    epoch: int
    """Epoch of the next batch."""
    batch_in_epoch: int
    """Index of the next batch within that epoch."""
    bad_records: int = 0
    skipped_steps: int = 0

    @classmethod
    def from_json(cls, data: dict) -> "TrainerState":
        """Counters only; the `history` that checkpoints of earlier versions carried is left out (the
        records are in `metrics.jsonl`)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    state: TrainerState
    origin: dict | None
    """What it was made from (`resume.Origin` as JSON); None in checkpoints that did not record it."""


class CheckpointDirectory:
    def __init__(self, root: Path, keep: int) -> None:
        self.root = root
        self.keep = keep

    def staging(self, step: int) -> Path:
        """A fresh directory for the ranks to write step `step` into."""
        path = self.root / f"step-{step:08d}.tmp"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def commit(self, staging: Path, state: TrainerState, origin: dict) -> Path:
        (staging / TRAINER_STATE).write_text(json.dumps(asdict(state)), encoding="utf-8")
        (staging / ORIGIN).write_text(json.dumps(origin), encoding="utf-8")
        final = staging.with_name(staging.name.removesuffix(".tmp"))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        self._retain()
        return final

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint; stale staging directories are removed on the way."""
        if not self.root.is_dir():
            return None
        for stale in self.root.glob("step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        return _newest(self._committed())

    def move_aside(self, now: datetime) -> Path | None:
        """Rename the whole directory to `<root>.old-<UTC time>` (a fresh start keeps the old run); None when
        there is nothing to move."""
        # The prepared data (`data.cache`) alone is no old run: it is keyed by what it was made from.
        if not self.root.exists() or all(path.name == CACHE_FOLDER for path in self.root.iterdir()):
            return None
        aside = self.root.with_name(f"{self.root.name}.old-{now.strftime('%Y%m%dT%H%M%SZ')}")
        self.root.rename(aside)
        return aside

    def _committed(self) -> list[Path]:
        return _committed_in(self.root)

    def _retain(self) -> None:
        for old in self._committed()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at `path`: a committed `step-NNNNNNNN` folder itself, or the newest one in a checkpoint
    folder. Reads only: the folder may be another job's, whose staging directories are its own business."""
    if _COMMITTED.match(path.name):
        return _newest([path])
    return _newest(_committed_in(path)) if path.is_dir() else None


def _committed_in(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and _COMMITTED.match(p.name))


def _newest(committed: list[Path]) -> Checkpoint | None:
    for path in reversed(committed):
        state_file = path / TRAINER_STATE
        if state_file.is_file():
            state = TrainerState.from_json(json.loads(state_file.read_text(encoding="utf-8")))
            origin_file = path / ORIGIN
            origin = json.loads(origin_file.read_text(encoding="utf-8")) if origin_file.exists() else None
            return Checkpoint(path, state, origin)
    return None
