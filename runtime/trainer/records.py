"""What the trainer logs per step, typed, and `metrics.jsonl`, appended as each record is made.

A record is written the moment it exists (a crashed job leaves every step it finished), and nothing that grows
with the run stays in memory: the log keeps only the totals the summary needs. A resumed run keeps the lines
up to its checkpoint's step and drops the ones after it (those steps are trained again), so the file of a run
that was interrupted and resumed reads like the file of one that was not.
"""

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainRecord:
    kind: ClassVar[str] = "train"
    step: int
    epoch: int
    loss: float
    kd_loss: float
    ce_loss: float
    grad_norm: float
    learning_rate: float
    tokens: int
    targets: int
    skipped: bool
    step_seconds: float
    """The driver's wall time of the step, from awaiting the teacher to the students' answer."""
    tokens_per_second: float
    teacher_seconds: float
    """Of `step_seconds`: waiting for the teacher's hidden states (zero when they were ready: overlap)."""
    plan_seconds: float
    """Laying out the next step and dispatching its teacher work, done while this step's students compute."""
    student_call_seconds: float
    rollout_seconds: float
    """Generating the round this step's samples came from (on-policy; counted on the round's first step)."""
    transfer_bytes: int
    """Teacher hidden states moved to the students (nothing else crosses)."""
    on_policy: bool = False
    """Whether the step trained on the student's own samples rather than the dataset's responses (which of
    the two, step by step, when spec.rollout.lmbda mixes them)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Rank 0's breakdown of its step (`StepStats.timings`): compute, backbone, loss, optimizer..."""
    figures: dict[str, float] = field(default_factory=dict)
    """The algorithm's own figures of the step (`Algorithm.summarize`: GRPO's reward, DPO's margin...)."""

    def to_json(self) -> dict[str, Any]:
        fields = asdict(self)
        timings = fields.pop("timings")
        figures = fields.pop("figures")
        return {"kind": self.kind, **fields, **timings, **figures}


@dataclass(frozen=True)
class EvalRecord:
    kind: ClassVar[str] = "eval"
    step: int
    eval_ce_loss: float
    eval_kd_divergence: float | None
    """None in a job without a teacher."""
    eval_teacher_agreement: float | None
    eval_tokens: int
    figures: dict[str, float] = field(default_factory=dict)
    """The algorithm's own figures over the eval set (`Algorithm.summarize`), each as `eval_<name>`."""

    def to_json(self) -> dict[str, Any]:
        fields = asdict(self)
        figures = fields.pop("figures")
        return {"kind": self.kind, **fields, **{f"eval_{name}": value for name, value in figures.items()}}


@dataclass(frozen=True)
class ProbeRecord:
    """The student's greedy answer to the first training prompt after a weight sync: the policy changing."""

    kind: ClassVar[str] = "probe"
    step: int
    response: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


Record = TrainRecord | EvalRecord | ProbeRecord


@dataclass(frozen=True)
class Totals:
    """What the summary needs of the whole run, kept as counters as records arrive."""

    train_steps: int = 0
    step_seconds: float = 0.0
    tokens_per_second: float = 0.0
    transfer_bytes: int = 0
    last_train: dict[str, Any] | None = None
    last_eval: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    """The newest record of any kind (whether a resumed run's final eval was done already)."""

    def add(self, record: dict[str, Any]) -> "Totals":
        if record["kind"] == "train":
            return replace(
                self,
                train_steps=self.train_steps + 1,
                step_seconds=self.step_seconds + record["step_seconds"],
                tokens_per_second=self.tokens_per_second + record["tokens_per_second"],
                transfer_bytes=self.transfer_bytes + record.get("transfer_bytes", 0),
                last_train=record,
                last=record,
            )
        if record["kind"] == "eval":
            return replace(self, last_eval=record, last=record)
        return replace(self, last=record)


class RecordLog:
    """`metrics.jsonl` in the output directory: one JSON line per record, flushed as it is written."""

    def __init__(
        self,
        directory: Path,
        resume_step: int | None,
        sink: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """A fresh run (`resume_step` None) starts an empty file; a resumed one keeps the lines of the steps
        up to `resume_step`. `sink` gets each line as it is written (the experiment trackers)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / METRICS_FILE
        self.totals = Totals()
        self._sink = sink
        self.rewind(resume_step)

    def rewind(self, step: int | None) -> None:
        """Keep the records up to `step` (None: none), as training goes on from there: the steps after it
        are trained again and write their records anew."""
        kept = [r for r in read_records(self.path) if r["step"] <= step] if step is not None else []
        self.totals = Totals()
        for record in kept:
            self.totals = self.totals.add(record)
        with self.path.open("w", encoding="utf-8") as stream:
            stream.writelines(json.dumps(record) + "\n" for record in kept)

    def append(self, record: Record) -> None:
        line = record.to_json()
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(line) + "\n")
        self.totals = self.totals.add(line)
        if self._sink is not None:
            self._sink(line)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a `metrics.jsonl`, oldest first. A line cut short by a crash mid-write is left out: it
    can only be the newest record, of a step after the last checkpoint, which the resumed run trains again."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
