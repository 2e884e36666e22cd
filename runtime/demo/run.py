"""`make demo`: a real distillation job end to end on local Ray, with tiny models built from configs.

1. Assets: the task's data (`demo.data`), a BPE tokenizer trained on it, a tiny teacher and a smaller
   student (random Qwen3 weights), written in the Hugging Face layout.
2. `examples/local/teacher-sft.yaml`: the teacher learns the task (supervised fine-tuning).
3. `examples/local/offpolicy.yaml`: the teacher is distilled into the student (teacher actor -> hidden
   states -> two FSDP2 student ranks on gloo).
4. `examples/local/student-sft.yaml`: the same student, data and steps, on the data alone: the baseline.
5. Both students are evaluated against the teacher on held-out data; a table compares them.

The jobs are the example manifests, run by the same trainer `kubedistill run` uses.
"""

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from kubedistill.runtime.demo.data import chat_records, picture_records, picture_texts, write_jsonl
from kubedistill.runtime.demo.tiny import (
    STUDENT_SHAPE,
    TEACHER_SHAPE,
    VLM_STUDENT_SHAPE,
    VLM_TEACHER_SHAPE,
    build_tokenizer,
    build_vlm_tokenizer,
    save_tiny,
    save_tiny_vlm,
)

if TYPE_CHECKING:
    from kubedistill.api.job import DistillationJob

TRAIN_RECORDS = 1280
STUDENT_RECORDS = 256
"""The students see a fifth of the teacher's data: distillation passes on what the teacher learnt from the
rest, which is where it beats fine-tuning on the same few records."""
EVAL_RECORDS = 256
JOBS = ("teacher-sft", "offpolicy", "student-sft")
PICTURE_RECORDS = 128
DEMO_LOG = "demo.log"
"""In the demo's folder: what its jobs and their Ray workers logged (warnings and up), run after run."""


@dataclass(frozen=True)
class Assets:
    root: Path

    @property
    def train(self) -> Path:
        return self.root / "assets" / "data" / "train.jsonl"

    @property
    def student_train(self) -> Path:
        return self.root / "assets" / "data" / "student-train.jsonl"

    @property
    def eval(self) -> Path:
        return self.root / "assets" / "data" / "eval.jsonl"

    @property
    def teacher_init(self) -> Path:
        return self.root / "assets" / "teacher-init"

    @property
    def student_init(self) -> Path:
        return self.root / "assets" / "student-init"

    @property
    def pictures(self) -> Path:
        """The picture chats' tokenizer-sharing tiny VLMs and data (`examples/local/pictures-*.yaml`)."""
        return self.root / "assets" / "pictures"

    def run_dir(self, job: str) -> Path:
        return self.root / "runs" / job


def prepare(root: Path, seed: int = 0) -> Assets:
    """Write the data, tokenizer and initial models (idempotent: existing assets are kept)."""
    assets = Assets(root)
    prepare_pictures(assets.pictures, seed)
    if assets.student_init.joinpath("config.json").exists():
        return assets
    train = chat_records(TRAIN_RECORDS, seed)
    held_out = chat_records(EVAL_RECORDS, seed + 1)
    write_jsonl(assets.train, train)
    write_jsonl(assets.student_train, train[:STUDENT_RECORDS])
    write_jsonl(assets.eval, held_out)
    texts = [" ".join(message["content"] for message in record["messages"]) for record in train + held_out]
    tokenizer = build_tokenizer(texts, vocab_size=400)
    save_tiny(assets.teacher_init, tokenizer, TEACHER_SHAPE, seed=seed)
    save_tiny(assets.student_init, tokenizer, STUDENT_SHAPE, seed=seed + 1)
    return assets


def prepare_pictures(folder: Path, seed: int = 0) -> None:
    """Tiny Qwen2-VL teacher and student (random weights, one tokenizer) and chats about pictures, for the
    vision-language examples; `make demo` writes them but does not train on them. Idempotent."""
    if (folder / "student-init" / "config.json").exists():
        return
    write_jsonl(folder / "data" / "train.jsonl", picture_records(folder / "data", PICTURE_RECORDS, seed))
    write_jsonl(folder / "data" / "eval.jsonl", picture_records(folder / "data", 32, seed + 1))
    tokenizer = build_vlm_tokenizer(picture_texts(), vocab_size=600)
    save_tiny_vlm(folder / "teacher-init", tokenizer, VLM_TEACHER_SHAPE, seed=seed)
    save_tiny_vlm(folder / "student-init", tokenizer, VLM_STUDENT_SHAPE, seed=seed + 1)


def run(root: Path, examples: Path, console: Console | None = None) -> dict[str, Any]:
    """Run the three jobs (reusing an output that holds a finished run of the job's steps) and compare the
    students."""
    from kubedistill.api.manifest import load_job
    from kubedistill.runtime.cluster.console import WHAT_THE_LOG_HOLDS, keep_log
    from kubedistill.runtime.cluster.session import connect

    console = console or Console()
    assets = prepare(root)
    connect()
    log_file = root / DEMO_LOG
    keep_log(log_file)
    console.print(f"log: {log_file} ({WHAT_THE_LOG_HOLDS})")
    for name in JOBS:
        train_or_reuse(name, load_job(examples / f"{name}.yaml"), console)
    comparison = compare(examples, assets)
    print_comparison(comparison, console)
    (root / "comparison.json").write_text(json.dumps(comparison, indent=2), encoding="utf-8")
    console.print(f"log: {log_file}")
    return comparison


def train_or_reuse(name: str, job: "DistillationJob", console: Console) -> None:
    """Train `job` unless its output holds a finished run of exactly the steps the job runs now.

    An output can hold a run of other steps: one stopped with `--max-steps`, or made from an older manifest.
    Compared with a fully trained student it would make the table's "same steps" untrue, so it is moved
    aside (kept, with its checkpoints) and the job trained afresh.
    """
    from kubedistill.runtime.trainer.controller import RunOptions, Trainer

    # The demo's example manifests each name their own output, so that the three runs stay apart.
    assert job.spec.output.path is not None, f"{name}: the demo's manifest names no spec.output.path"
    output = Path(job.spec.output.path)
    trainer = Trainer(job, RunOptions(output_dir=output, metrics_port=0, print_summary=False))
    done = finished_steps(output)
    if done == trainer.total_steps:
        console.print(f"[dim]{name}: already trained, {done} steps ({output})[/dim]")
        return
    if done is not None:
        aside = _move_aside(output, job, done)
        console.print(
            f"{name}: {output} holds a run of {done} steps, the job runs {trainer.total_steps}: training "
            f"again (the old run is kept in {aside})"
        )
    console.rule(f"{name}: {job.spec.mode}")
    trainer.run()


def finished_steps(output: Path) -> int | None:
    """The steps of the run whose summary is in `output`; None when there is none."""
    summary = output / "summary.json"
    if not summary.exists():
        return None
    return json.loads(summary.read_text(encoding="utf-8"))["steps"]


def _move_aside(output: Path, job: "DistillationJob", steps: int) -> Path:
    """Rename the output (and a checkpoint directory outside it, whose steps a new run would resume from)
    to a name not taken yet; nothing is deleted."""
    checkpoints = Path(job.spec.checkpoint.path) if job.spec.checkpoint.path else None
    if checkpoints is not None and checkpoints.exists() and not checkpoints.is_relative_to(output):
        checkpoints.rename(_free_name(checkpoints, steps))
    aside = _free_name(output, steps)
    output.rename(aside)
    return aside


def _free_name(path: Path, steps: int) -> Path:
    name = f"{path.name}.{steps}-steps"
    return next(
        candidate
        for candidate in (path.with_name(name if n == 1 else f"{name}.{n}") for n in itertools.count(1))
        if not candidate.exists()
    )


def compare(examples: Path, assets: Assets) -> dict:
    """Eval loss and teacher agreement of both students (and the teacher itself) on the held-out data.

    Raises `ValueError` when the two students ran different numbers of steps: the comparison would not say
    what distillation gives.
    """
    from kubedistill.api.manifest import load_job
    from kubedistill.runtime.trainer.controller import RunOptions, Trainer

    steps = {run: finished_steps(assets.run_dir(run)) for run in ("offpolicy", "student-sft")}
    if steps["offpolicy"] != steps["student-sft"]:
        raise ValueError(
            f"the distilled student ran {steps['offpolicy']} steps and the fine-tuned one "
            f"{steps['student-sft']}; give both jobs the same steps to compare them"
        )
    template = load_job(examples / "offpolicy.yaml")
    runs = {
        "teacher (sft)": "teacher-sft",
        "student, distilled": "offpolicy",
        "student, sft only": "student-sft",
    }
    options = RunOptions(
        output_dir=assets.run_dir("offpolicy"), metrics_port=0, progress=False, print_summary=False
    )
    records = Trainer(template, options).evaluate_students(
        [str(assets.run_dir(run)) for run in runs.values()]
    )
    results = dict(zip(runs, records, strict=True))
    for label, run in runs.items():
        summary = json.loads((assets.run_dir(run) / "summary.json").read_text(encoding="utf-8"))
        results[label]["loss_plot"] = summary.get("loss_plot")
        results[label]["mean_step_seconds"] = summary.get("mean_step_seconds")
        results[label]["steps"] = summary["steps"]
    return results


def print_comparison(results: dict, console: Console) -> None:
    table = Table(title="Held-out data: who learnt the task, and who learnt it from the teacher")
    table.add_column("model")
    table.add_column("eval loss (CE)", justify="right")
    table.add_column("KL to teacher", justify="right")
    table.add_column("top-1 agreement with teacher", justify="right")
    for label, record in results.items():
        table.add_row(
            label,
            f"{record['eval_ce_loss']:.4f}",
            f"{record['eval_kd_divergence']:.4f}",
            f"{record['eval_teacher_agreement']:.1%}",
        )
    console.print(table)
    distilled, baseline = results["student, distilled"], results["student, sft only"]
    gain = 1 - distilled["eval_ce_loss"] / baseline["eval_ce_loss"]
    console.print(
        f"Same student, data and steps ({distilled['steps']}): distillation gives {gain:.1%} lower held-out "
        f"loss than fine-tuning ({distilled['eval_ce_loss']:.4f} vs {baseline['eval_ce_loss']:.4f})."
    )
    for label, record in results.items():
        if record.get("loss_plot"):
            console.print(f"{label}: loss curve {record['loss_plot']}")
