"""`kubedistill run` with all three experiment trackers against the real things: a `mlflow server` on
loopback, W&B offline (its transaction log read back), TensorBoard event files (read with TensorBoard's own
reader). One job of four steps feeds them all: its steps, its evaluation, its spec, its rollout rounds, its
summary and the exported student. The job mixes on- and off-policy steps (spec.rollout.lmbda, TRL GKD's
lmbda) and has the teacher answer the off-policy steps' prompts (sequenceKd), so the same run shows that end
to end too: a job start costs more than all the checks made on it.

A resumed job's trackers are checked without Ray: opened again on a step, as the trainer does, they go on in
the runs the first opening made.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kubedistill.api import parse_job
from kubedistill.cli import app
from kubedistill.runtime.trainer.records import read_records
from kubedistill.runtime.trainer.sources import on_policy_step
from kubedistill.runtime.trainer.tracking.opening import open_trackers, student_files
from kubedistill.runtime.trainer.tracking.sinks import RUNS_FILE, read_runs
from tests.runtime.conftest import ONE_RANK, TINY_ROLLOUT, TinyWorld, job_manifest
from tests.runtime.trainer.tracking_readers import (
    MlflowServer,
    start_mlflow,
    stop_mlflow,
    tensorboard_events,
    tensorboard_text,
    wait_for_mlflow,
    wandb_history,
    wandb_of_kind,
)

STEPS = 4
SEED = 4
"""Seed 4 draws steps 1, 3 and 4 on-policy and step 2 off-policy (step 5 off again)."""


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """Started first: it boots (tens of seconds) while the tiny models are written and Ray starts."""
    server = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    yield server
    stop_mlflow(server)


def tracking(server: MlflowServer, experiment: str) -> dict[str, Any]:
    return {
        "tensorboard": {},
        "mlflow": {"trackingUri": wait_for_mlflow(server), "experiment": experiment},
        "wandb": {"project": "kubedistill-test", "mode": "offline"},
    }


@pytest.fixture(scope="module")
def tracked_run(
    mlflow_server: MlflowServer, tiny: TinyWorld, ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("tracked")
    manifest = job_manifest(
        tiny,
        "tracked",
        mode="onPolicy",
        rollout={**TINY_ROLLOUT, "lmbda": 0.5, "sequenceKd": True},
        student=ONE_RANK,
        data={"eval": {"path": str(tiny.eval)}},
        training={"maxSteps": STEPS, "logEverySteps": 1, "seed": SEED},
        output={"rolloutRounds": STEPS},
        tracking=tracking(mlflow_server, "tracked"),
    )
    file = root / "job.yaml"
    file.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    output = root / "out"
    result = CliRunner().invoke(app, ["run", str(file), "--output", str(output), "--metrics-port", "0"])
    assert result.exit_code == 0, result.output
    return output


def _wandb_run_file(output: Path) -> Path:
    (run_file,) = output.glob("wandb/offline-run-*/run-*.wandb")
    return run_file


def test_the_mixed_job_trains_drawn_steps_on_its_samples_the_others_on_the_teachers_syncing_before_its_own(
    tracked_run: Path,
) -> None:
    drawn = [on_policy_step(SEED, 0, position, 0.5) for position in range(STEPS + 1)]
    assert drawn == [True, False, True, True, False]
    history = list(read_records(tracked_run / "metrics.jsonl"))
    train = [r for r in history if r["kind"] == "train"]
    assert [r["on_policy"] for r in train] == drawn[:STEPS]
    assert all(r["rollout_seconds"] > 0 for r in train), "the student samples, or the teacher"
    # The engines start with the student's weights: they take new ones after the steps before steps 3 and 4.
    assert [r["step"] for r in history if r["kind"] == "probe"] == [2, 3]
    rounds = tracked_run / "rollouts"
    assert sorted(path.name for path in rounds.iterdir()) == [f"step-{step}.jsonl" for step in range(1, 5)]
    for record in train:
        responses = [
            json.loads(line) for line in (rounds / f"step-{record['step']}.jsonl").read_text().splitlines()
        ]
        assert len(responses) == 16 and sum(r["response_tokens"] for r in responses) == record["targets"]
        # The dataset's chats up to their last answer, which the student writes instead.
        assert all(r["prompt"].startswith("<|im_start|>user") for r in responses)
        assert all(r["prompt"].endswith("<|im_start|>assistant\n") for r in responses)
    (off,) = [r for r in train if not r["on_policy"]]
    assert off["targets"] <= 16 * TINY_ROLLOUT["maxNewTokens"], "the teacher's answers, not the dataset's"


def test_mlflow_gets_every_step_the_eval_the_spec_the_rollouts_the_summary_and_the_student(
    tracked_run: Path, mlflow_server: MlflowServer
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(read_runs(tracked_run)["mlflow"])
    assert run.info.status == "FINISHED"
    records = list(read_records(tracked_run / "metrics.jsonl"))
    trains = [r for r in records if r["kind"] == "train"]
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["loss"])) for r in trains]
    for name in (
        "train/learning_rate",
        "train/grad_norm",
        "train/tokens_per_second",
        "train/teacher_seconds",
    ):
        assert len(client.get_metric_history(run.info.run_id, name)) == STEPS, name
    (evaluation,) = [r for r in records if r["kind"] == "eval"]
    assert run.data.metrics["eval/ce_loss"] == pytest.approx(evaluation["eval_ce_loss"])
    assert run.data.params["training.maxSteps"] == str(STEPS)
    assert run.data.params["mode"] == "onPolicy"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec.json", "summary.json", "rollouts", "student"} <= artifacts
    rounds = {a.path for a in client.list_artifacts(run.info.run_id, "rollouts")}
    assert rounds == {f"rollouts/step-{step}.json" for step in range(1, STEPS + 1)}
    uploaded = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "student")}
    assert uploaded == {path.name for path in student_files(tracked_run)}
    assert "model.safetensors" in uploaded
    (tracked_run / "downloaded").mkdir()
    downloaded = client.download_artifacts(run.info.run_id, "summary.json", str(tracked_run / "downloaded"))
    summary = json.loads(Path(downloaded).read_text())
    assert summary == json.loads((tracked_run / "summary.json").read_text())


def test_wandb_offline_gets_every_step_the_spec_the_rollout_tables_the_summary_and_the_student(
    tracked_run: Path,
) -> None:
    run_file = _wandb_run_file(tracked_run)
    (run,) = wandb_of_kind(run_file, "run")
    assert run.run_id == read_runs(tracked_run)["wandb"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["mode"] == "onPolicy"
    assert config["training"]["maxSteps"] == STEPS
    history = wandb_history(run_file)
    trains = [r for r in read_records(tracked_run / "metrics.jsonl") if r["kind"] == "train"]
    logged = {int(row["trainer/step"]): float(row["train/loss"]) for row in history if "train/loss" in row}
    assert logged == {r["step"]: pytest.approx(r["loss"]) for r in trains}
    tables = [row for row in history if row.get("rollouts/_type") == '"table-file"']
    assert [int(row["trainer/step"]) for row in tables] == list(range(1, STEPS + 1))
    assert any("eval/ce_loss" in row for row in history)
    summary_keys = {
        item.key or "/".join(item.nested_key) for s in wandb_of_kind(run_file, "summary") for item in s.update
    }
    assert "summary/final_loss" in summary_keys
    models = [a for a in wandb_of_kind(run_file, "artifact") if a.type == "model"]
    assert [a.name for a in models] == ["tracked-student"]
    assert {entry.path for entry in models[0].manifest.contents} == {
        p.name for p in student_files(tracked_run)
    }


def test_tensorboard_gets_every_step_the_spec_the_rollout_tables_and_the_summary(tracked_run: Path) -> None:
    events = tensorboard_events(tracked_run / "tensorboard")
    trains = [r for r in read_records(tracked_run / "metrics.jsonl") if r["kind"] == "train"]
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(r["step"], pytest.approx(r["loss"])) for r in trains]
    assert "train/compute_seconds" in events.Tags()["scalars"], "the step-time breakdown"
    ((_, spec),) = tensorboard_text(events, "spec")
    assert "mode: onPolicy" in spec
    rounds = tensorboard_text(events, "rollouts")
    assert [step for step, _ in rounds] == list(range(1, STEPS + 1))
    first_round = [
        json.loads(line) for line in (tracked_run / "rollouts" / "step-1.jsonl").read_text().splitlines()
    ]
    assert rounds[0][1].count("\n") == len(first_round) + 1, "a header, a rule and a row per response"
    assert rounds[0][1].startswith("| step |") and "| kd_divergence |" in rounds[0][1].splitlines()[0]
    ((_, summary),) = tensorboard_text(events, "summary")
    assert '"final_loss"' in summary


def test_the_runs_are_named_in_tracking_json_and_the_spec_carries_no_credential(tracked_run: Path) -> None:
    runs = json.loads((tracked_run / RUNS_FILE).read_text())
    assert set(runs) == {"tensorboard", "mlflow", "wandb"}


def test_a_resumed_job_goes_on_in_the_same_tracker_runs(
    tiny: TinyWorld, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    job = parse_job(job_manifest(tiny, "resumed", tracking=tracking(mlflow_server, "resumed")))
    failures: list[object] = []
    first = open_trackers(job, tmp_path, None, failures.append)
    first.record({"kind": "train", "step": 1, "loss": 2.0})
    first.record({"kind": "train", "step": 2, "loss": 1.5})  # after the checkpoint: trained again
    first.close(succeeded=False)
    runs = read_runs(tmp_path)
    resumed = open_trackers(job, tmp_path, 1, failures.append)
    resumed.record({"kind": "train", "step": 2, "loss": 1.25})
    resumed.record({"kind": "train", "step": 3, "loss": 1.0})
    resumed.close(succeeded=True)
    assert failures == []
    assert read_runs(tmp_path) == runs

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(runs["mlflow"])
    assert run.info.status == "FINISHED"
    steps = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps[0] == (1, 2.0) and steps[-1] == (3, 1.0) and (2, 1.25) in steps
    assert len(client.search_runs([run.info.experiment_id])) == 1

    run_files = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert [path.name for path in run_files] == [f"run-{runs['wandb']}.wandb"] * 2, "one run id, twice"
    events = tensorboard_events(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.0), (2, 1.25), (3, 1.0)], (
        "the first opening's step 2 purged"
    )


def test_a_job_that_starts_from_step_0_starts_new_runs(
    tiny: TinyWorld, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    job = parse_job(job_manifest(tiny, "restarted", tracking=tracking(mlflow_server, "restarted")))
    open_trackers(job, tmp_path, None, print).close(succeeded=False)
    before = read_runs(tmp_path)
    open_trackers(job, tmp_path, None, print).close(succeeded=True)
    after = read_runs(tmp_path)
    assert before["mlflow"] != after["mlflow"] and before["wandb"] != after["wandb"]
