"""`kubedistill run` as a user runs it with the job's engines on the real SGLang engine (CPU, fp32): its own
teacher writes the answers on an SGLang rollout engine (the generation phase), then the student trains on them
off-policy against an SGLang teacher. The same job on transformers, greedy, is the reference: the answers and
the losses must be the same. One engine a phase and one student rank: each SGLang engine start costs about 30
CPU-seconds here, and how a batch is split over teacher replicas or ranks is the same on either backend (the
trainer's tests)."""

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubedistill.api import parse_job, telemetry
from kubedistill.runtime.generation import phase
from kubedistill.runtime.trainer.controller import RunOptions, Trainer
from tests.runtime.conftest import ONE_RANK, TinyWorld, job_manifest
from tests.test_bad_inputs import kubedistill

pytestmark = [pytest.mark.sglang, pytest.mark.usefixtures("ray_session")]

LOSS_TOLERANCE = 1e-5
"""The same job on either backend: losses equal to float32 rounding of the hidden states (4.8e-7)."""


def generate_then_train(tiny: TinyWorld, output: Path, backend: str) -> dict[str, Any]:
    engine = {"backend": backend, "memFractionStatic": 0.3}
    return job_manifest(
        tiny,
        "sglang-run",
        teacher=engine,
        student=ONE_RANK,
        # Greedy and kept when cut: this random teacher never ends an answer within 8 tokens.
        generation={"samplesPerPrompt": 1, "maxNewTokens": 8, "temperature": 0.0, "keepTruncated": True},
        training={"maxSteps": 3},
        output={"path": str(output)},
    )


def _train_losses(output: Path) -> list[float]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [record["loss"] for record in records if record["kind"] == "train"]


def _generated(output: Path) -> list[dict]:
    answers = output / "generated" / "sglang-run.jsonl"
    return [json.loads(line) for line in answers.read_text().splitlines()]


def test_kubedistill_run_generates_and_trains_on_sglang_as_on_transformers(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    # The reference in this process (its Ray is the session's): the same two phases `kubedistill run` runs.
    reference = tmp_path / "transformers"
    reference_job = parse_job(generate_then_train(tiny, reference, "transformers"))
    generated = phase.run_generation(reference_job, reference, os.environ)
    Trainer(
        phase.training_job(reference_job, generated.path),
        RunOptions(output_dir=reference, metrics_port=0, progress=False, print_summary=False),
    ).run()

    output = tmp_path / "sglang"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(generate_then_train(tiny, output, "sglang")), encoding="utf-8")
    outcome = kubedistill(["run", str(job)], tmp_path, env={telemetry.METRICS_PORT_ENV: "0"})
    assert outcome.exit_code == 0, outcome.stderr[-3000:]

    assert _generated(output) == _generated(reference)
    assert len(_train_losses(output)) == 3
    assert _train_losses(output) == pytest.approx(_train_losses(reference), abs=LOSS_TOLERANCE)
