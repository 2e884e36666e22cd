"""Weights & Biases: a run in spec.tracking.wandb.project, online or offline (`<output>/wandb/`).

Every record's scalars against the metric `trainer/step` (`define_metric`), so that the steps a resumed run
trains again can be logged again (W&B's own `_step` only goes up); the spec as the run's config; each rollout
round as a `wandb.Table`; the summary in the run's summary; the exported student as a `model` artifact. A
resumed job continues the run of the same id (`resume="allow"`), kept in `<output>/tracking.json`.
"""

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubedistill.api.tracking import Tracker, WandbMode, WandbSpec
from kubedistill.runtime.trainer.rollouts import RolloutRecord
from kubedistill.runtime.trainer.tracking.records import ROLLOUT_COLUMNS, rollout_rows, summary_scalars

STEP_METRIC = "trainer/step"
FOLDER = "wandb"


class WandbSink:
    tracker = Tracker.WANDB

    def __init__(
        self, spec: WandbSpec, job_name: str, config: Mapping[str, Any], output_dir: Path, run_id: str | None
    ) -> None:
        import wandb

        settings: dict[str, Any] = {"silent": True, "console": "off"}
        if spec.base_url:
            settings["base_url"] = spec.base_url
        if spec.credentials is not None:
            settings["api_key"] = os.environ[spec.credentials.env]
        self._wandb = wandb
        self._run = wandb.init(
            project=spec.project,
            entity=spec.entity,
            name=job_name,
            id=run_id or uuid.uuid4().hex[:12],
            resume="allow",
            config=dict(config),
            dir=str(output_dir),
            mode=spec.mode.value,
            settings=wandb.Settings(**settings),
        )
        self._run.define_metric("*", step_metric=STEP_METRIC)
        self.run_id = self._run.id
        self.url = self._run.url if spec.mode == WandbMode.ONLINE else None
        self._job = job_name

    def log(self, step: int, scalars: Mapping[str, float], texts: Mapping[str, str]) -> None:
        self._run.log({STEP_METRIC: step, **scalars, **texts})

    def rollouts(self, step: int, records: Sequence[RolloutRecord]) -> None:
        rows: Any = rollout_rows(records)
        table = self._wandb.Table(columns=list(ROLLOUT_COLUMNS), data=rows)
        self._run.log({STEP_METRIC: step, "rollouts": table})

    def summary(self, summary: Mapping[str, Any]) -> None:
        self._run.summary.update({f"summary/{k}": v for k, v in summary_scalars(summary).items()})

    def upload(self, files: Sequence[Path], name: str) -> None:
        artifact = self._wandb.Artifact(f"{self._job}-{name}", type="model")
        for path in files:
            artifact.add_file(str(path))
        self._run.log_artifact(artifact)

    def close(self, succeeded: bool) -> None:
        self._run.finish(exit_code=0 if succeeded else 1)
