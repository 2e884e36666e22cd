"""MLflow: a run on spec.tracking.mlflow.trackingUri, through `mlflow.MlflowClient` (explicit run ids, no
process-wide active run).

Metrics per step (`log_batch`), the spec flattened into params and whole as `spec.json`, each rollout round
as a table (`log_table`, `rollouts/step-N.json`), `summary.json`, and the exported student under
`student/`. A resumed job reopens the run it wrote to (its id is kept in `<output>/tracking.json`); MLflow
keeps a metric's values by step, so the steps trained again after the checkpoint are simply logged again.
"""

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubedistill.api.tracking import MlflowSpec, Tracker
from kubedistill.runtime.trainer.rollouts import RolloutRecord
from kubedistill.runtime.trainer.tracking.records import (
    ROLLOUT_COLUMNS,
    flat_config,
    rollout_rows,
    summary_scalars,
)

PARAMS_PER_BATCH = 100
"""The most params one `log_batch` takes (MLflow's MAX_PARAMS_TAGS_PER_BATCH)."""
PARAM_VALUE_LENGTH = 6000
"""The longest param value MLflow keeps (MAX_PARAM_VAL_LENGTH); the whole spec is in `spec.json` too."""


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI; None where the URI is no web server (databricks://profile)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


class MlflowSink:
    tracker = Tracker.MLFLOW

    def __init__(
        self, spec: MlflowSpec, job_name: str, config: Mapping[str, Any], run_id: str | None
    ) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        if spec.credentials is not None and spec.credentials.env != "MLFLOW_TRACKING_TOKEN":
            # The client reads its token from MLFLOW_TRACKING_TOKEN only (mlflow/environment_variables.py).
            os.environ["MLFLOW_TRACKING_TOKEN"] = os.environ[spec.credentials.env]
        self._client = MlflowClient(tracking_uri=spec.tracking_uri)
        if run_id is not None:
            run = self._client.get_run(run_id)
            self._client.update_run(run_id, status="RUNNING")
        else:
            name = spec.experiment or job_name
            experiment = self._client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(name)
            run = self._client.create_run(
                experiment_id, run_name=job_name, tags={"kubedistill.io/job": job_name}
            )
            params = [Param(key, value[:PARAM_VALUE_LENGTH]) for key, value in flat_config(config)]
            for start in range(0, len(params), PARAMS_PER_BATCH):
                self._client.log_batch(run.info.run_id, params=params[start : start + PARAMS_PER_BATCH])
            self._client.log_dict(run.info.run_id, dict(config), "spec.json")
        self.run_id = run.info.run_id
        self.url = run_url(spec.tracking_uri, run.info.experiment_id, self.run_id)

    def log(self, step: int, scalars: Mapping[str, float], texts: Mapping[str, str]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for name, value in scalars.items()]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)
        for name, text in texts.items():
            self._client.log_text(self.run_id, text, f"{name}/step-{step}.txt")

    def rollouts(self, step: int, records: Sequence[RolloutRecord]) -> None:
        rows = rollout_rows(records)
        columns = {column: [row[i] for row in rows] for i, column in enumerate(ROLLOUT_COLUMNS)}
        self._client.log_table(self.run_id, columns, f"rollouts/step-{step}.json")

    def summary(self, summary: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(summary.get("steps") or 0)
        metrics = [Metric(f"summary/{k}", v, now, step) for k, v in summary_scalars(summary).items()]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)
        self._client.log_dict(self.run_id, dict(summary), "summary.json")

    def upload(self, files: Sequence[Path], name: str) -> None:
        for path in files:
            self._client.log_artifact(self.run_id, str(path), name)

    def close(self, succeeded: bool) -> None:
        # KILLED, not FAILED, for a run that stops early: its job resumes it (or was stopped on purpose).
        self._client.set_terminated(self.run_id, "FINISHED" if succeeded else "KILLED")
