"""Where a training step's time goes, and what dynamic batching saves on length-skewed data.

Runs real jobs on local Ray (CPU): one teacher actor (transformers) and two FSDP2 student ranks on gloo, the
demo's tiny Qwen3 models. Part 1 splits a step into the teacher wait (time the driver still waited for the
teacher after dispatching it a step ahead), the students' fetch of hidden states from the object store,
forward+backward, and the optimizer. Part 2 trains on data where a quarter of the answers are ten times
longer than the rest, with fixed-size micro-batches and with a token budget per device.

    .venv/bin/python -m bench.step [--steps 20]
"""

import argparse
import json
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.report import report
from kubedistill.api import parse_job
from kubedistill.runtime.demo import prepare
from kubedistill.runtime.demo_data import chat_records, write_jsonl
from kubedistill.runtime.ray_session import connect
from kubedistill.runtime.trainer import RunOptions, Trainer

WARMUP_STEPS = 2


def job(assets: Path, name: str, train: Path, **training: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubedistill.io/v1alpha1",
        "kind": "DistillationJob",
        "metadata": {"name": name},
        "spec": {
            "mode": "offPolicy",
            "teacher": {"model": str(assets / "teacher-init"), "backend": "transformers"},
            "student": {"model": str(assets / "student-init"), "replicas": 2, "gradientCheckpointing": False},
            "distillation": {"loss": "fkl", "kdRatio": 0.9},
            "data": {"train": {"path": str(train)}, "maxLength": 512, "promptMaxLength": 64},
            "training": {"globalBatchSize": 16, "learningRate": 1e-3, "precision": "fp32", **training},
        },
    }


def run(manifest: dict[str, Any], output: Path, steps: int) -> list[dict]:
    options = RunOptions(
        output_dir=output, stop_after_steps=steps, metrics_port=0, progress=False, print_summary=False
    )
    Trainer(parse_job(manifest), options).run()
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"][WARMUP_STEPS:]


def mean(records: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in records)


def skewed_records(count: int, seed: int) -> list[dict]:
    """Chats where a quarter of the answers are about ten times longer than the rest."""
    rng = random.Random(seed)
    records = chat_records(count, seed)
    for record in records:
        if rng.random() < 0.25:
            answer = record["messages"][1]["content"]
            record["messages"][1]["content"] = " ".join([answer] * rng.randint(8, 12))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    connect()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        assets = prepare(root).root / "assets"
        skewed = write_jsonl(root / "skewed.jsonl", skewed_records(16 * (args.steps + 4), seed=3))

        breakdown = run(
            job(assets, "step-breakdown", assets / "data" / "train.jsonl", microBatchSize=8),
            root / "breakdown",
            args.steps,
        )
        fixed = run(job(assets, "fixed-micro-batches", skewed, microBatchSize=4), root / "fixed", args.steps)
        dynamic = run(
            job(assets, "dynamic-batching", skewed, maxTokensPerDevice=768), root / "dynamic", args.steps
        )

    parts = ("teacher_seconds", "fetch_seconds", "compute_seconds", "optimizer_seconds", "step_seconds")
    rows = [
        {
            "run": "demo models, micro-batch 8",
            **{p: mean(breakdown, p) for p in parts},
            "tokens_per_second": mean(breakdown, "tokens_per_second"),
        }
    ]
    for name, records in (("skewed data, micro-batch 4", fixed), ("skewed data, 768 tokens/device", dynamic)):
        rows.append(
            {
                "run": name,
                **{p: mean(records, p) for p in parts},
                "tokens_per_second": mean(records, "tokens_per_second"),
            }
        )
    speedup = rows[1]["step_seconds"] / rows[2]["step_seconds"]
    report(
        "step",
        f"Step time, mean of {args.steps - WARMUP_STEPS} steps (dynamic batching speed-up {speedup:.2f}x)",
        rows,
        {
            "steps": args.steps,
            "warmup_steps": WARMUP_STEPS,
            "dynamic_batching_speedup": speedup,
            "student_ranks": 2,
            "teacher_actors": 1,
            "device": "cpu",
        },
    )


if __name__ == "__main__":
    main()
