"""`kubedistill run` as a user meets it across runs: Ctrl-C, SIGTERM, a re-run that resumes, a re-run of a
finished job, a changed job, `--restart`, a kill -9, and a second job started from the first one's
checkpoint; on data as people keep it (gzipped shards in a folder beside a README, one dialogue too long
for the job's limits).

One job is run for real three times (interrupted, resumed to its end, restarted and killed), and a second
job once (started from the first's checkpoint, stopped by SIGTERM); every other re-run here is refused or
found finished before Ray starts, so it takes seconds.
"""

import gzip
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from kubedistill.api import telemetry
from kubedistill.api.status import Reason
from kubedistill.operator.mirror import mirrored_status
from kubedistill.runtime.cluster.console import last_frame
from kubedistill.runtime.demo.data import chat_records, write_jsonl
from kubedistill.runtime.demo.tiny import TinyShape, save_tiny
from kubedistill.runtime.models.loading import load_tokenizer
from kubedistill.runtime.trainer import report
from tests.runtime.conftest import ONE_RANK, TinyWorld, job_manifest
from tests.test_bad_inputs import KUBEDISTILL, Outcome, kubedistill

CLI_TIMEOUT_SECONDS = 600
EPOCHS = 2
RECORDS = 89
"""88 of the tiny world's records in two gzipped shards, the second ending in a dialogue too long for the
job's limits."""
STEPS = 12
"""Two epochs of 89 records in global batches of 16: five full ones and the last 9, which uneven ranks
share (5 and 4)."""
FIRST_SHARD = 48
LOG_EVERY = 4
KILLED_RAY_GRACE_SECONDS = 30
"""How long a killed run's Ray processes may take to go; without the watchdog Ray's agents stay 60-90 s."""
FINISHED_RAY_GRACE_SECONDS = 5
"""How long a finished run's Ray workers may take to go once the command exited (the watchdog's kill)."""


@dataclass(frozen=True)
class Job:
    root: Path
    file: Path
    manifest: dict[str, Any]

    @property
    def checkpoints(self) -> Path:
        return self.root / "ckpt"

    @property
    def output(self) -> Path:
        return self.root / "out"

    def variant(self, name: str, **spec_changes: Any) -> Path:
        """The same job with some spec sections changed, in a file of its own."""
        spec = dict(self.manifest["spec"])
        for section, value in spec_changes.items():
            spec[section] = {**spec[section], **value} if isinstance(value, dict) else value
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**self.manifest, "spec": spec}), encoding="utf-8")
        return path

    def history(self) -> list[dict]:
        return [json.loads(line) for line in (self.output / "metrics.jsonl").read_text().splitlines()]


Helpers = dict[psutil.Process, str]
"""The processes a run started (its descendants), by name."""


@pytest.fixture(scope="module")
def job(tiny: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Job:
    root = tmp_path_factory.mktemp("cli-run")
    lines = tiny.train.read_text().splitlines(keepends=True)[: RECORDS - 1]
    train = root / "shards"
    train.mkdir()
    (train / "train-0.jsonl.gz").write_bytes(gzip.compress("".join(lines[:FIRST_SHARD]).encode()))
    long_shard = "".join(lines[FIRST_SHARD:]) + json.dumps(_dialogue(20)) + "\n"
    (train / "train-1.jsonl.gz").write_bytes(gzip.compress(long_shard.encode()))
    (train / "README.md").write_text("Shards of the tiny task.\n")
    manifest = job_manifest(
        tiny,
        "cli-run",
        data={"train": {"path": str(train)}},
        training={"epochs": EPOCHS, "logEverySteps": LOG_EVERY},
        checkpoint={"path": str(root / "ckpt"), "everySteps": 2},
        output={"path": str(root / "out")},
    )
    file = root / "job.yaml"
    file.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    return Job(root, file, manifest)


def _dialogue(turns: int) -> dict:
    messages = [{"role": "system", "content": "You are a careful tutor."}]
    for turn in range(turns):
        messages += [
            {"role": "user", "content": f"What is {turn}+{turn}?"},
            {"role": "assistant", "content": "4"},
        ]
    return {"messages": messages}


def _as_a_shell_starts_a_job() -> None:
    """A shell starts a foreground job with Ctrl-C's and SIGTERM's default actions and no signal blocked. A
    test worker may not be so: its SIGINT ignored or blocked, which a child inherits across exec, so Ctrl-C
    never reached the run (seen in `make test` on two workers: the run trained to its end and exited 0)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(args: list[str], cwd: Path, ray_root: str) -> subprocess.Popen:
    """The command in a process group of its own, as a shell runs a foreground job."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return subprocess.Popen(
        [KUBEDISTILL, *args],
        cwd=cwd,
        env={**env, "RAY_TMPDIR": ray_root, telemetry.METRICS_PORT_ENV: "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_as_a_shell_starts_a_job,
    )


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + CLI_TIMEOUT_SECONDS
    while not path.is_dir():
        assert process.poll() is None, f"the run ended before {path.name}:\n{process.communicate()[1]}"
        assert time.monotonic() < deadline, f"no {path} after {CLI_TIMEOUT_SECONDS} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def interrupted(job: Job) -> Outcome:
    """Ctrl-C once the step-2 checkpoint is written: SIGINT to the whole process group, as a terminal sends
    it."""
    with tempfile.TemporaryDirectory(prefix="kd-ray-") as ray_root:
        process = _start(["run", str(job.file)], job.root, ray_root)
        _wait_for(job.checkpoints / "step-00000002", process)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_SECONDS)
    return Outcome(process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def interrupted_history(job: Job, interrupted: Outcome) -> list[dict]:
    return job.history()


@dataclass(frozen=True)
class Terminated:
    outcome: Outcome
    file: Path
    checkpoints: Path
    output: Path

    def history(self) -> list[dict]:
        return [json.loads(line) for line in (self.output / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def terminated(job: Job, interrupted_history: list[dict]) -> Terminated:
    """A second job, started from the interrupted job's checkpoints (spec.checkpoint.resumeFrom), given
    SIGTERM (to the whole process group, as `docker stop` or a kubelet stopping a container whose first
    process it is) once two steps are done. It checkpoints only when stopped (everySteps beyond its end). It
    trains on one rank the weights two ranks saved."""
    root = job.root / "next"
    root.mkdir()
    spec = {
        **job.manifest["spec"],
        "student": {**job.manifest["spec"]["student"], **ONE_RANK},
        "checkpoint": {"path": str(root / "ckpt"), "everySteps": 100, "resumeFrom": str(job.checkpoints)},
        "output": {"path": str(root / "out")},
    }
    file = root / "job.yaml"
    file.write_text(yaml.safe_dump({**job.manifest, "metadata": {"name": "cli-run-next"}, "spec": spec}))
    records = root / "out" / "metrics.jsonl"
    with tempfile.TemporaryDirectory(prefix="kd-ray-") as ray_root:
        process = _start(["run", str(file)], root, ray_root)
        deadline = time.monotonic() + CLI_TIMEOUT_SECONDS
        while not records.is_file() or len(records.read_text().splitlines()) < 2:
            assert process.poll() is None, f"the run ended before two steps:\n{process.communicate()[1]}"
            assert time.monotonic() < deadline, f"no two steps after {CLI_TIMEOUT_SECONDS} s"
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_SECONDS)
    return Terminated(Outcome(process.returncode, stdout, stderr), file, root / "ckpt", root / "out")


@pytest.fixture(scope="module")
def resumed_run(job: Job, interrupted_history: list[dict]) -> Iterator[tuple[Outcome, Helpers]]:
    """The re-run after Ctrl-C, to the end, with the processes it started (noted while it runs)."""
    with tempfile.TemporaryDirectory(prefix="kd-ray-") as ray_root:
        process = _start(["run", str(job.file)], job.root, ray_root)
        helpers: Helpers = {}
        while process.poll() is None:
            helpers.update(_descendants(process.pid))
            time.sleep(0.2)
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_SECONDS)
        yield Outcome(process.returncode, stdout, stderr), helpers
        for helper in helpers:
            if _running(helper):
                helper.kill()


@pytest.fixture(scope="module")
def resumed(resumed_run: tuple[Outcome, Helpers]) -> Outcome:
    return resumed_run[0]


def test_ctrl_c_says_where_it_stopped_and_where_a_rerun_resumes(job: Job, interrupted: Outcome) -> None:
    assert interrupted.exit_code == 130, interrupted.stderr
    (line,) = [line for line in interrupted.lines if "interrupted" in line]
    summary = json.loads((job.output / "summary.json").read_text())
    latest = max(path.name for path in job.checkpoints.iterdir())
    assert line == (
        f"{job.file}: interrupted at step {summary['steps']} of {STEPS}; a re-run resumes from "
        f"{job.checkpoints / latest} (step {int(latest.removeprefix('step-'))}); what was done is in "
        f"{job.output}"
    )


def test_ctrl_c_leaves_the_metrics_and_summary_of_what_was_done(
    job: Job, interrupted: Outcome, interrupted_history: list[dict]
) -> None:
    summary = json.loads((job.output / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert summary["steps"] >= 2
    trained = [record["step"] for record in interrupted_history if record["kind"] == "train"]
    assert trained == list(range(1, summary["steps"] + 1))


def test_sigterm_ends_the_step_checkpoints_it_and_exits_143_saying_where(terminated: Terminated) -> None:
    """143 (128 + SIGTERM) fails the Ray job, which KubeRay retries; the retry resumes from the checkpoint."""
    outcome = terminated.outcome
    assert outcome.exit_code == 143, outcome.stderr
    summary = json.loads((terminated.output / "summary.json").read_text())
    step = summary["steps"]
    (line,) = [line for line in outcome.lines if line.startswith(f"{terminated.file}: ")]
    checkpoint = terminated.checkpoints / f"step-{step:08d}"
    assert line == (
        f"{terminated.file}: stopped by SIGTERM at step {step} of {STEPS}; a re-run resumes from "
        f"{checkpoint} (step {step}); what was done is in {terminated.output}"
    )
    assert sorted(path.name for path in terminated.checkpoints.iterdir()) == [
        "prepared",
        f"step-{step:08d}",
    ], "one checkpoint, at the step it stopped, and no staging directory left"
    assert summary["interrupted"] is True
    trained = [record["step"] for record in terminated.history() if record["kind"] == "train"]
    assert trained == list(range(1, step + 1))
    assert "SIGTERM received" not in outcome.stderr and "Traceback" not in outcome.stderr, outcome.stderr


def test_a_job_started_from_another_jobs_checkpoint_takes_its_student_weights(
    terminated: Terminated, interrupted_history: list[dict]
) -> None:
    """spec.checkpoint.resumeFrom: the second job counts its own steps from 1, on the same first batch as the
    first job's step 1, from the first job's trained weights (a lower loss), under its own name."""
    first = next(record for record in interrupted_history if record["kind"] == "train")
    second = next(record for record in terminated.history() if record["kind"] == "train")
    assert (first["step"], second["step"]) == (1, 1)
    assert second["loss"] < first["loss"] - 0.05, (second["loss"], first["loss"])
    (checkpoint,) = terminated.checkpoints.glob("step-*")
    assert json.loads((checkpoint / "origin.json").read_text())["job"] == "cli-run-next"


def test_the_record_shortened_to_fit_is_counted_and_named_by_shard_and_line(
    job: Job, resumed: Outcome
) -> None:
    """Nothing is cut without a word: the warning names the gzipped shard's line, and so does the summary."""
    shard = job.root / "shards" / "train-1.jsonl.gz"
    line = RECORDS - FIRST_SHARD
    assert (
        "spec.data.train: 1 of 89 records were shortened to fit spec.data.maxLength 64 / promptMaxLength 32; "
        f"the first: {shard}:{line}: dropped its "
    ) in resumed.stderr
    summary = json.loads((job.output / "summary.json").read_text())
    assert (summary["steps"], summary["truncated_records"]) == (STEPS, 1)
    assert summary["truncated_record_sources"][0].startswith(f"{shard}:{line}: ")


def test_the_exported_weights_can_be_read_by_other_users(job: Job, resumed: Outcome) -> None:
    weights, config = (
        (job.output / name).stat().st_mode & 0o777 for name in ("model.safetensors", "config.json")
    )
    assert weights == config and weights & 0o044, f"model.safetensors is {weights:o}, config.json {config:o}"


def test_a_rerun_after_ctrl_c_resumes_and_trains_to_the_end(job: Job, resumed: Outcome) -> None:
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    trained = [record["step"] for record in job.history() if record["kind"] == "train"]
    assert trained == list(range(1, STEPS + 1))


def test_each_epoch_trains_every_record_its_last_step_the_remainder(job: Job, resumed: Outcome) -> None:
    """89 records at global batch 16: six steps an epoch, not five with 9 records never trained."""
    epochs = [record["epoch"] for record in job.history() if record["kind"] == "train"]
    assert epochs == [0] * 6 + [1] * 6


def test_the_run_logs_a_progress_line_every_log_every_steps(job: Job, resumed: Outcome) -> None:
    (resumed_at,) = (int(step) for step in re.findall(r"resuming from .* \(step (\d+)\)", resumed.stderr))
    logged = [int(step) for step in re.findall(rf"step (\d+)/{STEPS}: loss \d", resumed.stderr)]
    assert logged == [step for step in range(resumed_at + 1, STEPS + 1) if step % LOG_EVERY == 0]
    assert logged, "no line was due"


def test_the_console_leaves_the_workers_bars_and_notices_to_the_runs_log_file(
    job: Job, resumed: Outcome
) -> None:
    """The progress, the warnings and the summary stay in sight; the workers' weight-loading bars and the
    gloo ranks' shutdown notice are in <output>/run.log, which the run names as it starts and ends."""
    log_file = job.output / "run.log"
    named = [line for line in resumed.lines if line.startswith("log: ")]
    assert named[0].startswith(f"log: {log_file} (") and named[-1] == resumed.lines[-1] == f"log: {log_file}"
    log = log_file.read_text(encoding="utf-8")
    for noise in ("Loading weights", "Writing model shards", "No backend of type 0 found for Process Group"):
        assert noise not in resumed.stdout + resumed.stderr
    # Every run loads weights; the gloo notice comes only from a rank whose group is torn down after a
    # certain point, not in every run, so only the bars are sure to be in the file.
    for bar in ("Loading weights", "Writing model shards"):
        assert bar in log
    assert re.search(r"\(StudentActor pid=\d+\) Loading weights: 100%", log), "a bar's last state, by whom"
    assert "KubeDistill run: cli-run" in resumed.stdout, "the summary"
    logged = [line for line in resumed.lines if re.search(rf"step \d+/{STEPS}: loss \d", line)]
    assert logged and all(last_frame(line).startswith(f"INFO {report.__name__}: step ") for line in logged), (
        "a log line is drawn after the bar clears itself, not on the bar's line"
    )
    assert re.search(rf"step {STEPS}/{STEPS}: loss \d", log), "the driver's lines are in the log too"


def test_a_finished_job_says_so_and_leaves_everything_as_it_is(job: Job, resumed: Outcome) -> None:
    metrics = (job.output / "metrics.jsonl").read_bytes()
    again = kubedistill(["run", str(job.file)], job.root)
    assert again.exit_code == 0, again.stderr
    assert again.stdout.strip() == (
        f"{job.file}: job cli-run is finished: trained to step {STEPS} of {STEPS} "
        f"({job.checkpoints / f'step-{STEPS:08d}'}), output in {job.output}. "
        "Nothing to do (--restart trains it again)."
    )
    assert (job.output / "metrics.jsonl").read_bytes() == metrics, "no eval record appended"
    assert again.ray_sessions == [], "Ray was started"


def test_fields_that_may_change_leave_the_job_resumable(job: Job, resumed: Outcome, tiny: TinyWorld) -> None:
    """Evaluation, cadence, layout and length may change: here the job is found finished, not refused."""
    changed = job.variant(
        "may-change",
        data={"eval": {"path": str(tiny.eval)}},
        training={"evalEverySteps": 3, "logEverySteps": 2, "microBatchSize": 2, "maxSteps": STEPS},
        checkpoint={"keep": 5, "everySteps": 4},
        student={"replicas": 1},
        backoffLimit=0,
    )
    outcome = kubedistill(["run", str(changed)], job.root)
    assert outcome.exit_code == 0, outcome.stderr
    assert "is finished" in outcome.stdout


@pytest.fixture(scope="module")
def more_data(job: Job) -> Path:
    return write_jsonl(job.root / "train-more.jsonl", chat_records(112, seed=0))


def test_a_changed_job_is_refused_naming_each_change_before_ray_starts(
    job: Job, resumed: Outcome, more_data: Path
) -> None:
    changed = job.variant(
        "changed",
        data={"train": {"path": str(more_data)}},
        training={"learningRate": 1.0e-5, "globalBatchSize": 8},
    )
    outcome = kubedistill(["run", str(changed)], job.root)
    assert outcome.exit_code == 1
    assert outcome.ray_sessions == [], "Ray was started"
    old_data = job.manifest["spec"]["data"]["train"]["path"]
    assert outcome.lines == [
        f"{changed}: spec.checkpoint.path: cannot resume from {job.checkpoints / f'step-{STEPS:08d}'} "
        f'(step {STEPS}): the job changed since: spec.data.train.path "{old_data}" -> "{more_data}"; '
        "spec.training.globalBatchSize 16 -> 8; spec.training.learningRate 0.01 -> 1e-05; "
        f"training data {RECORDS} -> 112 records. To start afresh: `kubedistill run --restart` (moves the "
        "old checkpoints aside), or a new spec.checkpoint.path; to go on from its weights as changed (new "
        f"data, say): spec.checkpoint.resumeFrom: {job.checkpoints / f'step-{STEPS:08d}'}, with a new "
        "spec.checkpoint.path; to resume, undo the changes"
    ]


def test_another_student_model_is_refused_before_the_checkpoint_loader_sees_its_shapes(
    job: Job, resumed: Outcome, tiny: TinyWorld
) -> None:
    wider = TinyShape(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2)
    other = save_tiny(job.root / "other-student", load_tokenizer(str(tiny.student)), wider, seed=3)
    changed = job.variant("other-student", student={"model": str(other)})
    outcome = kubedistill(["run", str(changed)], job.root)
    assert outcome.exit_code == 1
    assert "Traceback" not in outcome.stderr and "Size mismatch" not in outcome.stderr
    (line,) = refusals(outcome, changed)
    assert f'spec.student.model "{tiny.student}" -> "{other}"' in line


def test_the_operator_fails_a_refused_job_with_reason_resume_refused(
    job: Job, resumed: Outcome, more_data: Path
) -> None:
    """The refusal as it reaches the DistillationJob: the command's stderr in the Ray job's message (Ray's
    wording for a failed entrypoint, `ray/dashboard/modules/job/job_supervisor.py:449-455`, Ray 2.60),
    copied by KubeRay into the RayJob's status.message (`rayjob_controller.go:356`, kuberay feeaf72f)."""
    changed = job.variant("changed-lr", training={"learningRate": 1.0e-5})
    outcome = kubedistill(["run", str(changed)], job.root)
    message = (
        "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
        + outcome.stderr
    )
    kuberay = {
        "jobDeploymentStatus": "Failed",
        "jobStatus": "FAILED",
        "reason": "AppFailed",
        "message": message,
    }
    rayjob = {"metadata": {"name": "cli-run"}, "status": kuberay}
    status = mirrored_status({}, rayjob, generation=1, now="2026-12-02T00:00:00Z")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (status["phase"], failed["status"], failed["reason"]) == ("Failed", "True", Reason.RESUME_REFUSED)
    (refusal,) = refusals(outcome, changed)
    assert failed["message"] == refusal.removeprefix(f"{changed}: ")


def refusals(outcome: Outcome, manifest: Path) -> list[str]:
    """The lines the command wrote about the manifest, after the data's warnings: the job's data holds a
    record shortened to fit, which every run reads, and so warns about, before it compares the job with its
    checkpoint."""
    others = [line for line in outcome.lines if not line.startswith(f"{manifest}: ")]
    assert all("were shortened to fit" in line for line in others), others
    return [line for line in outcome.lines if line.startswith(f"{manifest}: ")]


def _descendants(pid: int) -> Helpers:
    helpers = {}
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    for helper in children:
        try:
            helpers[helper] = helper.name()
        except psutil.NoSuchProcess:
            continue
    return helpers


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def restarted_and_killed(job: Job, resumed: Outcome) -> Iterator[tuple[Outcome, Helpers]]:
    """`--restart` on the finished job, killed with SIGKILL once its first checkpoint is written."""
    with tempfile.TemporaryDirectory(prefix="kd-ray-") as ray_root:
        process = _start(["run", str(job.file), "--restart"], job.root, ray_root)
        _wait_for(job.checkpoints / "step-00000002", process)
        helpers = _descendants(process.pid)
        process.kill()
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_SECONDS)
        yield Outcome(process.returncode, stdout, stderr), helpers
        for helper in helpers:
            if _running(helper):
                helper.kill()


def test_restart_moves_the_old_checkpoints_aside_and_starts_from_step_0(
    job: Job, restarted_and_killed: tuple[Outcome, Helpers]
) -> None:
    outcome, _ = restarted_and_killed
    (aside,) = job.root.glob("ckpt.old-*")
    assert f"{job.file}: --restart: moved the old checkpoints aside to {aside}" in outcome.lines
    assert (aside / f"step-{STEPS:08d}" / "trainer.json").is_file(), "the finished run's checkpoints are kept"
    assert min(path.name for path in job.checkpoints.glob("step-*")) == "step-00000002"


def test_a_killed_run_takes_its_local_ray_with_it(restarted_and_killed: tuple[Outcome, Helpers]) -> None:
    outcome, helpers = restarted_and_killed
    assert outcome.exit_code == -signal.SIGKILL
    assert "raylet" in helpers.values()
    deadline = time.monotonic() + KILLED_RAY_GRACE_SECONDS
    while alive := [name for helper, name in helpers.items() if _running(helper)]:
        assert time.monotonic() < deadline, (
            f"still running {KILLED_RAY_GRACE_SECONDS} s after the kill: {alive}"
        )
        time.sleep(0.5)


def test_a_finished_run_stops_its_local_ray_before_it_exits(resumed_run: tuple[Outcome, Helpers]) -> None:
    """The command stops Ray itself (`session.disconnect`, the autoscaler's monitor first) and ends without
    Python's teardown; nothing it started outlives it by more than a moment, and Ray reports no error."""
    outcome, helpers = resumed_run
    assert outcome.exit_code == 0, outcome.stderr
    assert {"raylet", "gcs_server"} <= set(helpers.values()), helpers
    deadline = time.monotonic() + FINISHED_RAY_GRACE_SECONDS
    while alive := [name for helper, name in helpers.items() if _running(helper)]:
        assert time.monotonic() < deadline, f"running {FINISHED_RAY_GRACE_SECONDS} s after the exit: {alive}"
        time.sleep(0.1)
    assert "autoscaler failed" not in outcome.stderr + outcome.stdout


def test_help_gives_the_metrics_port_the_run_really_uses() -> None:
    done = subprocess.run(
        [KUBEDISTILL, "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert f"{telemetry.METRICS_PORT_ENV} or {telemetry.DEFAULT_METRICS_PORT}" in done.stdout
