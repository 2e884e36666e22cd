"""On-policy self-distillation end to end, as the local example runs it (KDFlow's self-distillation): the
student samples responses to the prompts on a rollout engine that follows its weights, the teacher (the same
model, refreshed every `teacherUpdateFreq` steps) scores those responses after a privileged input
(`teacherInputKey`: the whole chat, its reference answer included), and the student learns from its own
responses against that teacher."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kubedistill.api import parse_job
from kubedistill.runtime.trainer.controller import RunOptions, Trainer
from tests.runtime.conftest import ONE_RANK, TinyWorld

pytestmark = pytest.mark.usefixtures("ray_session")

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "local" / "onpolicy-self-distillation.yaml"
TEACHER_UPDATE_FREQ = yaml.safe_load(EXAMPLE.read_text())["spec"]["distillation"]["teacherUpdateFreq"]
CHECKPOINT_EVERY = TEACHER_UPDATE_FREQ - 1
"""A checkpoint between two teacher updates: the teacher it must bring back is not the student of its step."""
STEPS = 2 * CHECKPOINT_EVERY


def _example(tiny: TinyWorld, checkpoints: Path) -> dict[str, Any]:
    """The local example on the tiny world's student and chats, for a few steps, evaluated after each, on one
    student rank (`ONE_RANK`)."""
    manifest = yaml.safe_load(EXAMPLE.read_text())
    spec = manifest["spec"]
    spec["student"] |= {"model": str(tiny.student), **ONE_RANK}
    spec["data"]["train"]["path"] = str(tiny.train)
    spec["data"]["eval"]["path"] = str(tiny.eval)
    spec["training"] |= {"maxSteps": STEPS, "evalEverySteps": 1}
    spec["checkpoint"] = {"path": str(checkpoints), "everySteps": CHECKPOINT_EVERY}
    return manifest


def _run(manifest: dict[str, Any], output: Path) -> list[dict]:
    options = RunOptions(output_dir=output, metrics_port=0, progress=False, print_summary=False)
    Trainer(parse_job(manifest), options).run()
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def _kind(history: list[dict], kind: str) -> list[dict]:
    return [r for r in history if r["kind"] == kind]


@dataclass(frozen=True)
class Runs:
    straight: Path
    """The output of the example run uninterrupted to its end."""
    history: list[dict]
    """Its records."""
    resumed: Path
    """The output of the same run again once its last checkpoint was lost: resumed from the one before."""
    resumed_history: list[dict]


@pytest.fixture(scope="module")
def runs(tiny: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The example run to its end, its output kept aside; then its final checkpoint deleted (a run that died
    after its last step leaves the same) and the same job run again, which resumes from the one before."""
    root = tmp_path_factory.mktemp("on-policy-self-distillation")
    manifest = _example(tiny, root / "ckpt")
    history = _run(manifest, root / "out")
    shutil.copytree(root / "out", root / "straight")
    shutil.rmtree(root / "ckpt" / f"step-{STEPS:08d}")
    return Runs(root / "straight", history, root / "out", _run(manifest, root / "out"))


def test_the_student_learns_from_its_own_samples_against_the_privileged_teacher(runs: Runs) -> None:
    train = _kind(runs.history, "train")
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert all(r["rollout_seconds"] > 0 for r in train), "every step is a new round of the student's samples"
    assert train[0]["kd_loss"] > 1e-5, "the teacher has the student's weights, but not its input"
    held_out = [r["eval_kd_divergence"] for r in _kind(runs.history, "eval")]
    assert len(held_out) == STEPS
    assert held_out[-1] == min(held_out) and held_out[-1] < 0.9 * held_out[0], held_out


def test_a_resumed_run_ends_like_an_uninterrupted_one(runs: Runs) -> None:
    """Resumed from a checkpoint between two teacher updates: the rollout engine resamples from the
    checkpoint's weights, and the teacher is the one it held then (the initial model), not the student of
    that step."""
    resumed = _kind(runs.resumed_history, "train")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    # The losses are divergences of about 1e-4: compared relative to their size.
    assert [r["loss"] for r in resumed] == pytest.approx(
        [r["loss"] for r in _kind(runs.history, "train")], rel=1e-5, abs=0
    )
    expected = load_file(runs.straight / "model.safetensors")
    actual = load_file(runs.resumed / "model.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=1e-6, msg=name)


def test_colocated_the_engines_take_turns_and_follow_the_student_while_asleep(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    """Student, rollout engine and teacher share one GPU: the engines start asleep and refuse work while
    asleep, so the run completes only if every generation and every scoring happens in that engine's turn;
    both take the student's weights while asleep (the teacher after every step here)."""
    manifest = _example(tiny, tmp_path / "ckpt")
    spec = manifest["spec"]
    spec["cluster"] = {"colocate": True}
    spec["distillation"]["teacherUpdateFreq"] = 1
    spec["training"] |= {"maxSteps": 2, "evalEverySteps": None}
    del spec["data"]["eval"], spec["checkpoint"]
    train = _kind(_run(manifest, tmp_path), "train")
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["kd_loss"] > 1e-5 for r in train), "the teacher reads its privileged input"
