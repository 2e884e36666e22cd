"""A whole on-policy job with its engines on the real SGLang engine (CPU, fp32), against the same job on
transformers: real Ray actors, FSDP2 ranks over gloo, the teacher's hidden states through SGLang's replaced
scheduler and /dev/shm, a rollout engine that takes the student's weights over a gloo broadcast group.
(`test_run_on_sglang.py` runs the off-policy path through `kubedistill run`.)

In fp32 the two backends agree to float32 rounding (`tests/runtime/engines/sglang/`), so a job trains the
same losses on either; greedy rollouts sample the same responses, the student's and, for sequence-level KD,
the teacher's.
"""

import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from kubedistill.api import parse_job
from kubedistill.runtime.trainer.controller import RunOptions, Trainer
from kubedistill.runtime.trainer.groups import Groups
from kubedistill.runtime.trainer.sources import on_policy_step
from tests.runtime.conftest import ONE_RANK, TINY_ROLLOUT, TinyWorld, job_manifest
from tests.runtime.trainer.test_faults import strike_once

pytestmark = [pytest.mark.sglang, pytest.mark.usefixtures("ray_session")]

SGLANG = {"backend": "sglang", "memFractionStatic": 0.3}
LOSS_TOLERANCE = 1e-5
"""The same job on either teacher: losses equal to float32 rounding of the hidden states (4.8e-7)."""
LMBDA = 0.3
"""With job_manifest's seed 7, steps 1, 2 and 4 train on the student's samples, 3 and 5 on the teacher's."""


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


def _steps(output: Path) -> list[dict]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [record for record in records if record["kind"] == "train"]


def _answers(output: Path, step: int) -> list[tuple[str, str]]:
    """The step's sampled responses, the student's or the teacher's, each with the record it answers."""
    lines = (output / "rollouts" / f"step-{step}.jsonl").read_text().splitlines()
    return [(record["source"], record["response"]) for record in map(json.loads, lines)]


def kill_teacher_engine(groups: Groups) -> None:
    """SIGKILL the SGLang scheduler processes of the teacher's engine (the actor's children): the engine
    crashes, as an out-of-memory kill or a kernel fault would end it."""
    actor = groups.teacher.actors[0]
    pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))
    children = psutil.Process(pid).children(recursive=True)
    assert children, "the SGLang engine runs its scheduler in processes of its own"
    for child in children:
        child.send_signal(signal.SIGKILL)


def test_on_policy_self_distillation_on_sglang_engines_trains_as_on_transformers_through_an_engine_crash(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    """The student samples on an SGLang rollout engine (the student's weights over a gloo broadcast group
    before the steps drawn on-policy, rollout.lmbda) and is scored by an SGLang teacher that starts as the
    student, sees the whole chat (privileged input, as the local example does) and takes the student's
    weights every 2 steps (CPU tensors into the engine). The other steps train on the teacher's answers to
    their prompts (sequenceKd), sampled by the same SGLang teacher engine. Greedy, so both backends sample
    the same responses, the student's and the teacher's.

    After step 2 the teacher's engine crashes: answering step 3's prompts fails, the engine is restarted,
    given the step-2 teacher's weights again, and step 3 is retried with nothing lost or repeated; step 5 is
    answered by the restarted engine.

    Without the privileged input the teacher is the student and the divergence is zero: Adam would then
    turn float32 rounding into whole steps, and no two backends would agree."""
    steps = {}
    for backend in ("transformers", "sglang"):
        engine = {"backend": backend, "memFractionStatic": 0.3}
        summary = _run(
            tiny,
            tmp_path / backend,
            stop=5,
            on_step=strike_once(2, kill_teacher_engine) if backend == "sglang" else None,
            mode="selfDistillation",
            teacher={"model": None, **engine},
            student=ONE_RANK,
            rollout={**TINY_ROLLOUT, **engine, "temperature": 0.0, "lmbda": LMBDA, "sequenceKd": True},
            distillation={"kdRatio": 1.0, "teacherUpdateFreq": 2},
            data={"train": {"path": str(tiny.train), "teacherInputKey": "messages"}},
        )
        steps[backend] = _steps(tmp_path / backend)
    # The step after the crash is the teacher's to answer: the failure met is its answering, not its scoring.
    assert summary["recoveries"] == [{"step": 2, "error": "TeacherUnavailable"}]
    drawn = [on_policy_step(7, 0, position, LMBDA) for position in range(5)]
    assert drawn == [True, True, False, True, False]
    for backend in steps:
        assert [step["on_policy"] for step in steps[backend]] == drawn, backend
    losses = {backend: [step["loss"] for step in records] for backend, records in steps.items()}
    assert losses["sglang"] == pytest.approx(losses["transformers"], abs=LOSS_TOLERANCE)
    assert max(losses["transformers"]) > 1e-3, "the privileged teacher disagrees with the student"
    for step, on_policy in enumerate(drawn, start=1):
        answers = {backend: _answers(tmp_path / backend, step) for backend in steps}
        assert answers["sglang"] == answers["transformers"], f"greedy: the same answers at step {step}"
        # The student answers the batch's first 8 prompts twice each; the teacher each of its 16 records once.
        records = [source for source, _ in answers["sglang"]]
        assert len(records) == 16 and len(set(records)) == (8 if on_policy else 16), step
