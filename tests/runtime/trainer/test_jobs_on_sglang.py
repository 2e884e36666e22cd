"""Whole jobs with their engines on the real SGLang engine (CPU, fp32), against the same jobs on transformers:
real Ray actors, FSDP2 ranks over gloo, the teacher's hidden states through SGLang's replaced scheduler and
/dev/shm, rollout engines that take the student's weights over a gloo broadcast group.

In fp32 the two backends agree to float32 rounding (`tests/runtime/engines/sglang/`), so a job trains the
same losses on either; greedy rollouts sample the same responses.
"""

import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
import yaml

from kubedistill.api import parse_job, telemetry
from kubedistill.runtime.trainer.controller import RunOptions, Trainer
from kubedistill.runtime.trainer.groups import Groups
from tests.runtime.conftest import TINY_ROLLOUT, TinyWorld, job_manifest
from tests.runtime.trainer.test_faults import strike_once
from tests.test_bad_inputs import kubedistill

pytestmark = [pytest.mark.sglang, pytest.mark.usefixtures("ray_session")]

SGLANG = {"backend": "sglang", "memFractionStatic": 0.3}
LOSS_TOLERANCE = 1e-5
"""The same job on either teacher: losses equal to float32 rounding of the hidden states (4.8e-7)."""


def _run(tiny: TinyWorld, output: Path, *, stop: int | None = None, on_step=None, **spec: Any) -> dict:
    options = RunOptions(
        output_dir=output,
        stop_after_steps=stop,
        metrics_port=0,
        progress=False,
        print_summary=False,
        on_step=on_step,
    )
    return Trainer(parse_job(job_manifest(tiny, "sglang-job", **spec)), options).run().summary


def _losses(output: Path) -> list[float]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [record["loss"] for record in records if record["kind"] == "train"]


def kill_teacher_engine(groups: Groups) -> None:
    """SIGKILL the SGLang scheduler processes of the teacher's engine (the actor's children): the engine
    crashes, as an out-of-memory kill or a kernel fault would end it."""
    actor = groups.teacher.actors[0]
    pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))
    children = psutil.Process(pid).children(recursive=True)
    assert children, "the SGLang engine runs its scheduler in processes of its own"
    for child in children:
        child.send_signal(signal.SIGKILL)


def test_kubedistill_run_off_policy_on_the_sglang_teacher_trains_the_losses_of_the_transformers_teacher(
    tiny: TinyWorld, straight_run: Path, tmp_path: Path
) -> None:
    """As a user runs it: the installed command, its own local Ray, the manifest naming backend sglang."""
    manifest = job_manifest(tiny, "sglang-run", teacher=SGLANG, output={"path": str(tmp_path / "out")})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    outcome = kubedistill(["run", str(job)], tmp_path, env={telemetry.METRICS_PORT_ENV: "0"})
    assert outcome.exit_code == 0, outcome.stderr[-3000:]
    assert _losses(tmp_path / "out") == pytest.approx(_losses(straight_run), abs=LOSS_TOLERANCE)


def test_a_crashed_sglang_teacher_engine_is_restarted_and_the_step_retried_with_nothing_lost(
    tiny: TinyWorld, straight_run: Path, tmp_path: Path
) -> None:
    summary = _run(tiny, tmp_path, on_step=strike_once(2, kill_teacher_engine), teacher=SGLANG)
    assert [r["error"] for r in summary["recoveries"]] == ["TeacherUnavailable"]
    assert _losses(tmp_path) == pytest.approx(_losses(straight_run), abs=LOSS_TOLERANCE)


def test_on_policy_with_sglang_rollout_engines_samples_and_trains_as_on_transformers(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    """Greedy rounds, so both backends sample the same responses; the engines take the student's weights
    over a gloo broadcast group after every step (SGLang's own weight-update group)."""
    greedy = {**TINY_ROLLOUT, "temperature": 0.0}
    for backend in ("transformers", "sglang"):
        rollout = {**greedy, "backend": backend, "memFractionStatic": 0.3}
        _run(
            tiny, tmp_path / backend, stop=3, mode="onPolicy", rollout=rollout, distillation={"kdRatio": 1.0}
        )
    assert _losses(tmp_path / "sglang") == pytest.approx(
        _losses(tmp_path / "transformers"), abs=LOSS_TOLERANCE
    )
