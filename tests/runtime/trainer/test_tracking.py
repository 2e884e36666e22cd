"""The trackers' plumbing without a tracker: what a record becomes, a tracker that fails or hangs never
stopping the run, the pre-flight lines, the run's page reaching the status, and the clients imported only
when a tracker is configured. (The trackers themselves: test_tracking_run.py.)"""

import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from kubedistill.api import telemetry
from kubedistill.api.tracking import Tracker, TrackingSpec
from kubedistill.operator.progress import parse_progress, with_progress
from kubedistill.runtime.trainer import preflight
from kubedistill.runtime.trainer.metrics import TrainerMetrics
from kubedistill.runtime.trainer.records import EvalRecord, TrainRecord
from kubedistill.runtime.trainer.rollouts import RolloutRecord
from kubedistill.runtime.trainer.tracking import sinks
from kubedistill.runtime.trainer.tracking.opening import check_trackers, student_files
from kubedistill.runtime.trainer.tracking.records import scalars, texts
from kubedistill.runtime.trainer.tracking.sinks import GIVE_UP_AFTER, TrackerFailure, Trackers

TRAIN = TrainRecord(
    step=3,
    epoch=0,
    loss=1.5,
    kd_loss=1.25,
    ce_loss=2.5,
    grad_norm=math.nan,
    learning_rate=1e-3,
    tokens=100,
    targets=40,
    skipped=True,
    step_seconds=0.5,
    tokens_per_second=200.0,
    teacher_seconds=0.1,
    plan_seconds=0.01,
    student_call_seconds=0.3,
    rollout_seconds=0.0,
    transfer_bytes=4096,
    timings={"compute_seconds": 0.25},
)


def test_a_train_record_becomes_its_numbers_named_by_kind_with_bools_as_0_1_and_nan_left_out() -> None:
    values = scalars(TRAIN.to_json())
    assert values["train/loss"] == 1.5
    assert values["train/compute_seconds"] == 0.25, "the step-time breakdown"
    assert values["train/skipped"] == 1.0
    assert "train/grad_norm" not in values
    assert "train/step" not in values, "the step is the x axis"


def test_an_eval_record_drops_its_eval_prefix_and_what_a_job_without_teacher_lacks() -> None:
    record = EvalRecord(
        step=4, eval_ce_loss=2.0, eval_kd_divergence=None, eval_teacher_agreement=None, eval_tokens=9
    )
    assert scalars(record.to_json()) == {"eval/ce_loss": 2.0, "eval/tokens": 9.0}
    assert texts({"kind": "probe", "step": 2, "response": "hello"}) == {"probe/response": "hello"}


class Recording:
    """A tracker that keeps what it is given; it fails `failing` calls, or waits for `release`."""

    def __init__(self, tracker: Tracker, failing: int = 0, release: threading.Event | None = None) -> None:
        self.tracker = tracker
        self.run_id = "run"
        self.url: str | None = None
        self.steps: list[int] = []
        self.closed: bool | None = None
        self._failing = failing
        self._release = release

    def log(self, step: int, scalars: Mapping[str, float], texts: Mapping[str, str]) -> None:
        if self._release is not None:
            self._release.wait()
        if self._failing:
            self._failing -= 1
            raise ConnectionError("server down")
        self.steps.append(step)

    def rollouts(self, step: int, records: Sequence[RolloutRecord]) -> None: ...

    def summary(self, summary: Mapping[str, Any]) -> None: ...

    def upload(self, files: Sequence[Path], name: str) -> None: ...

    def close(self, succeeded: bool) -> None:
        self.closed = succeeded


def _records(steps: range) -> list[dict[str, Any]]:
    return [{"kind": "train", "step": step, "loss": 1.0} for step in steps]


def test_a_failing_tracker_is_counted_then_dropped_and_the_others_get_every_record() -> None:
    failures: list[TrackerFailure] = []
    broken = Recording(Tracker.MLFLOW, failing=1000)
    healthy = Recording(Tracker.TENSORBOARD)
    trackers = Trackers([broken, healthy], failures.append)
    for line in _records(range(1, 21)):
        trackers.record(line)
    trackers.close(succeeded=True, timeout=30)
    assert healthy.steps == list(range(1, 21)) and healthy.closed is True
    assert len(failures) == GIVE_UP_AFTER, "counted until dropped, then left alone"
    assert {f.tracker for f in failures} == {Tracker.MLFLOW}
    assert "ConnectionError: server down" in failures[0].error
    assert broken.closed is None, "a dropped tracker gets no more calls"


def test_a_tracker_that_recovers_is_kept() -> None:
    failures: list[TrackerFailure] = []
    flaky = Recording(Tracker.WANDB, failing=GIVE_UP_AFTER - 1)
    trackers = Trackers([flaky], failures.append)
    for line in _records(range(1, 11)):
        trackers.record(line)
    trackers.close(succeeded=False, timeout=30)
    assert flaky.steps == list(range(GIVE_UP_AFTER, 11)) and flaky.closed is False


def test_a_hanging_tracker_never_holds_up_the_steps_and_is_dropped_once_its_queue_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sinks, "QUEUE_LENGTH", 5)
    release = threading.Event()
    hanging = Recording(Tracker.MLFLOW, release=release)
    trackers = Trackers([hanging], lambda failure: None)
    started = time.perf_counter()
    for line in _records(range(1, 101)):
        trackers.record(line)
    trackers.close(succeeded=True, timeout=30)
    assert time.perf_counter() - started < 1.0, "the loop, or the end of the run, waited for the tracker"
    release.set()
    assert len(hanging.steps) <= 1 and hanging.closed is None, "dropped once its queue filled"


def test_a_run_that_stops_early_waits_only_briefly_for_a_hanging_tracker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sinks, "STOP_TIMEOUT_SECONDS", 0.5)
    release = threading.Event()
    hanging = Recording(Tracker.WANDB, release=release)
    trackers = Trackers([hanging], lambda failure: None)
    trackers.record({"kind": "train", "step": 1, "loss": 1.0})
    started = time.perf_counter()
    trackers.close(succeeded=False)
    waited = time.perf_counter() - started
    release.set()
    assert 0.5 <= waited < 5.0, "a stopped run waits STOP_TIMEOUT_SECONDS, not the finished run's half hour"


def test_the_exported_student_is_the_top_files_of_the_output_less_the_runs_own(tmp_path: Path) -> None:
    for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.jsonl", "summary.json",
                 "loss.png", "run.log", "tracking.json"):  # fmt: skip
        (tmp_path / name).write_text("x")
    (tmp_path / "rollouts").mkdir()
    assert [p.name for p in student_files(tmp_path)] == ["config.json", "model.safetensors", "tokenizer.json"]


def _check(tracking: dict[str, Any], environ: dict[str, str], output: Path) -> list[str]:
    spec = TrackingSpec.model_validate(tracking)
    return check_trackers(spec, output, environ, preflight.check_writable)


def test_an_mlflow_server_that_does_not_answer_is_one_line_naming_the_field(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{closed.getsockname()[1]}"
        (problem,) = _check({"mlflow": {"trackingUri": uri}}, {}, tmp_path)
    assert problem.startswith(f"spec.tracking.mlflow.trackingUri: no MLflow server answers at {uri} (")
    assert "\n" not in problem


def test_a_credential_variable_that_is_not_set_and_online_wandb_without_a_key_are_named(
    tmp_path: Path,
) -> None:
    credentials = {"env": "KD_TEST_WANDB_KEY", "secretKeyRef": {"name": "wandb", "key": "api-key"}}
    (unset,) = _check({"wandb": {"project": "p", "credentials": credentials}}, {}, tmp_path)
    assert unset.startswith("spec.tracking.wandb.credentials.env: KD_TEST_WANDB_KEY is not set")
    (keyless,) = _check({"wandb": {"project": "p"}}, {}, tmp_path)
    assert keyless.startswith("spec.tracking.wandb: online W&B needs an API key")
    assert _check({"wandb": {"project": "p"}}, {"WANDB_API_KEY": "k"}, tmp_path) == []
    assert _check({"wandb": {"project": "p", "mode": "offline"}, "tensorboard": {}}, {}, tmp_path) == []


def test_a_tensorboard_folder_nobody_may_write_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    (problem,) = _check({"tensorboard": {"logDir": str(tmp_path / "a-file" / "tb")}}, {}, tmp_path)
    assert problem.startswith("spec.tracking.tensorboard.logDir: cannot write to")


def test_the_tracker_runs_page_reaches_the_status_through_metrics() -> None:
    metrics = TrainerMetrics("team", "kd")
    metrics.set_tracker_url("mlflow", "http://mlflow:5000/#/experiments/1/runs/abc")
    metrics.set_tracker_url("wandb", "https://wandb.ai/team/kd/runs/xyz")
    other = TrainerMetrics("team", "another")
    other.set_tracker_url("mlflow", "http://mlflow:5000/#/experiments/1/runs/other")
    text = (generate_latest(metrics.registry) + generate_latest(other.registry)).decode()
    fields = parse_progress(text, namespace="team", job="kd")
    assert fields["tracker_urls"] == {
        "mlflow": "http://mlflow:5000/#/experiments/1/runs/abc",
        "wandb": "https://wandb.ai/team/kd/runs/xyz",
    }
    status = with_progress(
        {}, fields, url="http://head:8090/metrics", generation=1, now="2026-01-01T00:00:00Z"
    )
    assert status["trackerURLs"]["wandb"] == "https://wandb.ai/team/kd/runs/xyz"
    untracked = generate_latest(TrainerMetrics("team", "kd").registry).decode()
    assert "tracker_urls" not in parse_progress(untracked, namespace="team", job="kd")


def test_tracker_failures_are_a_counter_of_the_metrics_contract() -> None:
    assert telemetry.TRACKER_ERRORS in telemetry.ALL
    metrics = TrainerMetrics("team", "kd")
    metrics.add(telemetry.TRACKER_ERRORS, 1)
    assert 'kubedistill_tracker_errors_total{distillationjob="kd",distillationjob_namespace="team"} 1.0' in (
        generate_latest(metrics.registry).decode()
    )


def test_no_tracker_client_is_imported_by_a_job_without_trackers() -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from kubedistill.api.tracking import TrackingSpec\n"
        "from kubedistill.runtime.trainer.tracking.opening import check_trackers\n"
        "from kubedistill.runtime.trainer.tracking.sinks import Trackers\n"
        "assert check_trackers(TrackingSpec(), Path('.'), {}, lambda p, f: None) == []\n"
        "Trackers([], print).close(True)\n"
        "print(sorted({'mlflow', 'wandb', 'tensorboard'} & {m.split('.')[0] for m in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
