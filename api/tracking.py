"""`spec.tracking`: experiment trackers that get what `metrics.jsonl` gets (TensorBoard, MLflow, W&B).

Every tracker is fed the same typed records as `metrics.jsonl` (each step's losses, learning rate, grad norm,
tokens/s and step-time breakdown, the evaluations), the job's spec as the run's config, each on-policy
round's sampled responses as a table, the final summary, and the exported student as an artifact where the
tracker keeps artifacts. A resumed job goes on in the same tracker run. Credentials come from a Secret
(`secretKeyRef`), never from the manifest.
"""

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from kubedistill.api.base import SpecModel
from kubedistill.api.generation import EnvVarName, SecretKeyRef


class Tracker(StrEnum):
    """The trackers' names: the keys of spec.tracking and of status.trackerURLs."""

    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow"
    WANDB = "wandb"


class TrackerCredentials(SpecModel):
    env: EnvVarName
    """Environment variable the tracker's client reads the credential from; it must be set where the job
    runs (locally: in your shell)."""
    secret_key_ref: SecretKeyRef | None = None
    """On Kubernetes: the Secret key the operator sets that variable from on the Ray head, where the driver
    writes to the trackers (the credential itself never appears in the manifest, the ConfigMap, the status or
    the logs)."""


class TensorBoardSpec(SpecModel):
    log_dir: Annotated[str, Field(min_length=1)] | None = None
    """Folder of the event files; unset: `<output>/tensorboard`. `tensorboard --logdir` on it shows the
    curves, the rollout tables (Text tab) and the spec (Text tab)."""


class MlflowSpec(SpecModel):
    tracking_uri: Annotated[str, Field(pattern=r"^(https?://[^\s/]+(/\S*)?|databricks(://\S*)?)$")]
    """The MLflow tracking server (`http(s)://host:port`, or `databricks`)."""
    experiment: Annotated[str, Field(min_length=1)] | None = None
    """Experiment the run goes in (created when missing); unset: the job's name."""
    credentials: TrackerCredentials | None = None
    """A token for a server that asks for one, e.g. `{env: MLFLOW_TRACKING_TOKEN, secretKeyRef: ...}`
    (MLFLOW_TRACKING_USERNAME/PASSWORD work too, through spec.cluster.env)."""


class WandbMode(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    """Written to `<output>/wandb/` only; `wandb sync` uploads it later."""


class WandbSpec(SpecModel):
    project: Annotated[str, Field(min_length=1)]
    """W&B project of the run."""
    entity: Annotated[str, Field(min_length=1)] | None = None
    """W&B team or user; unset: the API key's default entity."""
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")] | None = None
    """A self-hosted W&B server; unset: wandb.ai."""
    mode: WandbMode = WandbMode.ONLINE
    """online uploads as the job runs (an API key is needed); offline writes `<output>/wandb/` only."""
    credentials: TrackerCredentials | None = None
    """The API key, e.g. `{env: WANDB_API_KEY, secretKeyRef: {name: wandb, key: api-key}}`."""


class TrackingSpec(SpecModel):
    tensorboard: TensorBoardSpec | None = None
    """TensorBoard event files."""
    mlflow: MlflowSpec | None = None
    """An MLflow tracking server."""
    wandb: WandbSpec | None = None
    """Weights & Biases."""
    upload_student: bool = True
    """Upload the exported student to the trackers that keep artifacts (MLflow, W&B) at the end; false
    leaves it on the output volume only (a large student is many GB)."""

    def configured(self) -> list[Tracker]:
        return [tracker for tracker in Tracker if getattr(self, tracker.value) is not None]
