"""Opening the trackers of spec.tracking, and the mistakes in their surroundings caught before Ray starts.

The client libraries are imported here only when a tracker is configured: a job without spec.tracking never
imports mlflow, wandb or tensorboard.
"""

import importlib.util
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from kubedistill.api.job import DistillationJob
from kubedistill.api.tracking import Tracker, TrackingSpec, WandbMode
from kubedistill.runtime.trainer.preflight import PreflightError
from kubedistill.runtime.trainer.records import METRICS_FILE
from kubedistill.runtime.trainer.report import LOSS_PLOT, SUMMARY_FILE
from kubedistill.runtime.trainer.tracking.sinks import (
    RUNS_FILE,
    Sink,
    TrackerFailure,
    Trackers,
    read_runs,
    write_runs,
)

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_SECONDS = 10.0
CLIENTS = {Tracker.TENSORBOARD: "tensorboard", Tracker.MLFLOW: "mlflow", Tracker.WANDB: "wandb"}
"""The package each tracker's client comes from (the runtime extra installs all three)."""


RUN_FILES = frozenset({METRICS_FILE, SUMMARY_FILE, LOSS_PLOT, "run.log", RUNS_FILE})
"""What a run writes to the top of its output folder besides the exported student (its folders, rollouts/,
generated/, tensorboard/ and wandb/, are never part of it)."""


def student_files(output_dir: Path) -> list[Path]:
    """The exported student: the files `export` saved at the top of the output folder (weights, config,
    tokenizer, image processor), the run's own files left out."""
    return sorted(p for p in output_dir.iterdir() if p.is_file() and p.name not in RUN_FILES)


def tensorboard_dir(tracking: TrackingSpec, output_dir: Path) -> Path:
    from kubedistill.runtime.trainer.tracking.tensorboard_sink import FOLDER

    spec = tracking.tensorboard
    return Path(spec.log_dir) if spec is not None and spec.log_dir else output_dir / FOLDER


def check_trackers(
    tracking: TrackingSpec,
    output_dir: Path,
    environ: Mapping[str, str],
    check_writable: Callable[[Path, str], None],
) -> list[str]:
    """`field: problem` lines: a client not installed, a credential's variable unset, an MLflow server that
    does not answer, a log folder nobody may write. Raises nothing."""
    problems = []
    for tracker in tracking.configured():
        if importlib.util.find_spec(CLIENTS[tracker]) is None:
            problems.append(
                f"spec.tracking.{tracker}: the {CLIENTS[tracker]} client is not installed "
                "(pip install 'kubedistill[runtime]')"
            )
    for field, spec in (("mlflow", tracking.mlflow), ("wandb", tracking.wandb)):
        credentials = spec.credentials if spec is not None else None
        if credentials is not None and not environ.get(credentials.env):
            problems.append(
                f"spec.tracking.{field}.credentials.env: {credentials.env} is not set (on Kubernetes the "
                "operator sets it from credentials.secretKeyRef)"
            )
    wandb = tracking.wandb
    keyless = wandb is not None and wandb.mode == WandbMode.ONLINE and wandb.credentials is None
    if keyless and not environ.get("WANDB_API_KEY"):
        problems.append(
            "spec.tracking.wandb: online W&B needs an API key: set credentials (or WANDB_API_KEY), or "
            "mode: offline"
        )
    if tracking.mlflow is not None:
        problem = mlflow_problem(tracking.mlflow.tracking_uri)
        if problem:
            problems.append(f"spec.tracking.mlflow.trackingUri: {problem}")
    if tracking.tensorboard is not None:
        try:
            check_writable(tensorboard_dir(tracking, output_dir), "spec.tracking.tensorboard.logDir")
        except PreflightError as error:
            problems.append(str(error))
    return problems


def mlflow_problem(tracking_uri: str, timeout: float = HEALTH_TIMEOUT_SECONDS) -> str | None:
    """Whether an MLflow server answers at `tracking_uri` (its `/health`, served by every `mlflow server`);
    None when it does, or when the URI is not HTTP (databricks: the client's own configuration)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    url = f"{tracking_uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return None  # a server behind authentication answers; the token is checked by the client
        return f"no MLflow server answers at {tracking_uri} ({url}: HTTP {error.code})"
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        return f"no MLflow server answers at {tracking_uri} ({reason})"


def open_trackers(
    job: DistillationJob,
    output_dir: Path,
    resume_step: int | None,
    on_error: Callable[[TrackerFailure], None],
) -> Trackers:
    """The trackers of the job, each open on its run: the runs of `tracking.json` when the job resumes from
    a checkpoint (`resume_step`), new ones when it starts from step 0. A tracker that cannot open is
    warned about and counted, and the job runs without it."""
    tracking = job.spec.tracking
    known = read_runs(output_dir) if resume_step is not None else {}
    config = job.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    sinks: list[Sink] = []
    for tracker in tracking.configured():
        try:
            sinks.append(_open(tracker, job, tracking, config, output_dir, known.get(tracker), resume_step))
        except Exception as error:  # a tracker is never the run's end
            failure = TrackerFailure(tracker, f"{type(error).__name__}: {error}")
            on_error(failure)
            log.warning("tracker %s could not open, the job runs without it: %s", tracker, failure.error)
    runs = {str(sink.tracker): sink.run_id for sink in sinks}
    if runs:
        write_runs(output_dir, runs)
    for sink in sinks:
        log.info("tracking to %s: %s", sink.tracker, sink.url or sink.run_id)
    return Trackers(sinks, on_error)


def _open(
    tracker: Tracker,
    job: DistillationJob,
    tracking: TrackingSpec,
    config: dict[str, object],
    output_dir: Path,
    run_id: str | None,
    resume_step: int | None,
) -> Sink:
    if tracker == Tracker.TENSORBOARD:
        from kubedistill.runtime.trainer.tracking.tensorboard_sink import TensorBoardSink

        return TensorBoardSink(tensorboard_dir(tracking, output_dir), config, resume_step)
    if tracker == Tracker.MLFLOW:
        from kubedistill.runtime.trainer.tracking.mlflow_sink import MlflowSink

        assert tracking.mlflow is not None
        return MlflowSink(tracking.mlflow, job.name, config, run_id)
    from kubedistill.runtime.trainer.tracking.wandb_sink import WandbSink

    assert tracking.wandb is not None
    return WandbSink(tracking.wandb, job.name, config, output_dir, run_id)
