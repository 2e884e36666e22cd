"""Mode reinforcement end to end: GRPO on the student's own samples, the teacher's likelihood of each sample
its reward, run by `kubedistill run` and resumed from its checkpoint (the command run in this process, on the
test session's Ray, which a job's own Ray start would double in cost).

The tiny world's teacher is a random model, whose judgement of one random answer over another is noise; here
it is made to like half of the vocabulary (`liking_teacher`), so a sample's reward measures how many of its
tokens are liked, and a student that learns what the teacher likes shows it in the reward."""

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from kubedistill.api import parse_job
from kubedistill.api.job import SpecError
from kubedistill.cli import app
from kubedistill.runtime.demo.data import chat_records
from kubedistill.runtime.demo.tiny import build_tokenizer
from kubedistill.runtime.trainer.controller import RunOptions, Trainer
from tests.runtime.conftest import ONE_RANK, TINY_ROLLOUT, TinyWorld, job_manifest

pytestmark = pytest.mark.usefixtures("ray_session")

STEPS = 12
CHECKPOINT_EVERY = STEPS // 2
LIKED_MARGIN = 4.0
"""How much higher the teacher's logit of a liked token is than it was, where it reads its usual text."""
TREND = 3
"""Steps averaged at each end of the run to compare the reward."""


def liking_teacher(tiny: TinyWorld, root: Path) -> Path:
    """The tiny teacher, made to like the even token ids: each of their output rows is moved along the mean
    direction of its final hidden states over some chats, so that their logits rise by LIKED_MARGIN where it
    reads such text (about 90% of its probability on them, where a random model gives half)."""
    model = AutoModelForCausalLM.from_pretrained(tiny.teacher)
    tokenizer = AutoTokenizer.from_pretrained(tiny.teacher)
    texts = [" ".join(m["content"] for m in record["messages"]) for record in chat_records(16, seed=3)]
    ids = [tokenizer.encode(text)[:16] for text in texts]
    head = model.get_output_embeddings()
    assert head is not None and not model.config.tie_word_embeddings
    with torch.no_grad():
        hidden = model(
            torch.tensor([i for i in ids if len(i) == 16]), output_hidden_states=True
        ).hidden_states[-1]
        direction = hidden.reshape(-1, hidden.shape[-1]).mean(0)
        head.weight[::2] += direction / direction.square().sum() * LIKED_MARGIN
    path = root / "liking-teacher"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def manifest(tiny: TinyWorld, teacher: Path, root: Path) -> dict[str, Any]:
    """4 prompts answered 4 times a step, on one student rank, at a learning rate that moves the tiny student
    within a few steps; checkpointed halfway."""
    return job_manifest(
        tiny,
        "reinforcement-test",
        mode="reinforcement",
        teacher={"model": str(teacher), "backend": "transformers"},
        student=ONE_RANK,
        rollout={**TINY_ROLLOUT, "batchSize": 4, "samplesPerPrompt": 4},
        distillation=None,
        training={"maxSteps": STEPS, "learningRate": 0.1, "microBatchSize": 16},
        checkpoint={"path": str(root / "ckpt"), "everySteps": CHECKPOINT_EVERY},
        output={"path": str(root / "out")},
    )


def _run(job: dict[str, Any], root: Path, *options: str) -> None:
    """`kubedistill run` on the job, in this process and its Ray session (no Ray of its own to start)."""
    file = root / "job.yaml"
    file.write_text(yaml.safe_dump(job), encoding="utf-8")
    result = CliRunner().invoke(app, ["run", *options, "--metrics-port", "0", str(file)])
    assert result.exit_code == 0, result.output[-3000:]


def _train(out: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"]


@pytest.fixture(scope="module")
def teacher(tiny: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return liking_teacher(tiny, tmp_path_factory.mktemp("teacher"))


@dataclass(frozen=True)
class Runs:
    straight: Path
    """The output of the job run uninterrupted to its end."""
    resumed: Path
    """The output of the same job run again once its last checkpoint was lost: resumed from the middle one."""


@pytest.fixture(scope="module")
def runs(tiny: TinyWorld, teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """`kubedistill run` to the end; its output kept aside; then its final checkpoint deleted (a run that died
    after its last step leaves the same) and the same command run again, which resumes from step 6."""
    root = tmp_path_factory.mktemp("reinforcement")
    job = manifest(tiny, teacher, root)
    _run(job, root)
    straight = root / "straight"
    shutil.copytree(root / "out", straight)
    shutil.rmtree(root / "ckpt" / f"step-{STEPS:08d}")
    _run(job, root)
    return Runs(straight, root / "out")


def test_the_reward_rises_as_the_student_learns_what_the_teacher_likes(runs: Runs) -> None:
    train = _train(runs.straight)
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    rewards = [r["reward"] for r in train]
    first, last = sum(rewards[:TREND]) / TREND, sum(rewards[-TREND:]) / TREND
    assert last > first + 0.3, rewards
    assert all(r["reward_std"] > 0 and r["frac_reward_zero_std"] < 1 for r in train)
    # Each answer kept in rollouts/ has its divergence, the teacher's negative log-probability per token: its
    # -reward; the step's 16 are 4 prompts' answers, 4 each.
    lines = (runs.straight / "rollouts" / f"step-{STEPS}.jsonl").read_text().splitlines()
    answers = [json.loads(line) for line in lines]
    assert sorted(Counter(a["source"] for a in answers).values()) == [4, 4, 4, 4]
    rewards_kept = [-a["kd_divergence"] for a in answers]
    assert sum(rewards_kept) / len(rewards_kept) == pytest.approx(train[-1]["reward"], rel=1e-5)
    assert train[0]["kl_to_reference"] == pytest.approx(0.0, abs=1e-6), "the first step is the reference"
    assert train[-1]["kl_to_reference"] > 0


def test_a_run_resumed_from_its_checkpoint_by_kubedistill_run_ends_like_an_uninterrupted_one(
    runs: Runs,
) -> None:
    """Resumed from step 6: the rollout engine samples from the checkpoint's weights with the round's seed,
    and the reference is the one the checkpoint kept (the student at step 0), not the student it resumes;
    the records of the steps trained again replace theirs."""
    resumed, straight = _train(runs.resumed), _train(runs.straight)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert [r["reward"] for r in resumed] == pytest.approx([r["reward"] for r in straight], rel=1e-5)
    assert [r["kl_to_reference"] for r in resumed] == pytest.approx(
        [r["kl_to_reference"] for r in straight], rel=1e-5, abs=1e-9
    )
    expected = load_file(runs.straight / "model.safetensors")
    actual = load_file(runs.resumed / "model.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=1e-6, msg=name)


def test_a_teacher_of_another_vocabulary_is_refused_naming_its_tokenizer(
    tiny: TinyWorld, teacher: Path, tmp_path: Path
) -> None:
    """The reward reads the teacher's probabilities of the student's token ids: refused before Ray starts."""
    texts = [" ".join(m["content"] for m in record["messages"]) for record in chat_records(96, seed=0)]
    build_tokenizer(texts, vocab_size=400).save_pretrained(tmp_path / "tokenizer")
    job = manifest(tiny, teacher, tmp_path)
    job["spec"]["teacher"]["tokenizer"] = str(tmp_path / "tokenizer")
    options = RunOptions(output_dir=tmp_path / "out", metrics_port=0, progress=False, print_summary=False)
    with pytest.raises(SpecError) as raised:
        Trainer(parse_job(job), options)
    assert raised.value.field == "spec.teacher.tokenizer"
    assert "needs the student's vocabulary" in raised.value.message
