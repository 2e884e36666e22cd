"""The `status` of a DistillationJob, written by the operator alone.

Condition types, reasons and phases are constants here because people and tools match on them
(`kubectl wait --for=condition=Succeeded`, alerts, Argo CD health checks).
"""

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from kubedistill.api.base import SpecModel


class Phase(StrEnum):
    PENDING = "Pending"
    """Accepted; the Ray cluster is being created or waits for capacity."""
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class ConditionType(StrEnum):
    CREATED = "Created"
    """The Ray job and its ConfigMap exist."""
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    PROGRESS_UNKNOWN = "ProgressUnknown"
    """True while the trainer's /metrics cannot be read; the job itself may be fine."""
    SPEC_CHANGE_IGNORED = "SpecChangeIgnored"
    """True when a field that cannot change on a running job was edited; the message names it."""
    EPHEMERAL_STORAGE = "EphemeralStorage"
    """True when a model, data, checkpoint or output path lies on no volume of the pods (so inside the
    image), or a written one on an emptyDir: what is written there goes with the pod. Names the fields."""


class Reason(StrEnum):
    INVALID_SPEC = "InvalidSpec"
    RAY_JOB_CREATED = "RayJobCreated"
    RAY_JOB_PENDING = "RayJobPending"
    RAY_JOB_RUNNING = "RayJobRunning"
    RAY_JOB_SUSPENDED = "RayJobSuspended"
    RAY_JOB_SUCCEEDED = "RayJobSucceeded"
    RAY_JOB_FAILED = "RayJobFailed"
    RAY_JOB_DELETED = "RayJobDeleted"
    METRICS_UNREACHABLE = "MetricsUnreachable"
    METRICS_READ = "MetricsRead"
    IMMUTABLE_FIELD_CHANGED = "ImmutableFieldChanged"
    SPEC_APPLIED = "SpecApplied"
    """SpecChangeIgnored is False: the spec matches what the running job was created from."""
    NAME_CONFLICT = "NameConflict"
    """Created is False: a child's name is taken by an object the job does not own."""
    RESUME_REFUSED = "ResumeRefused"
    """Failed: the spec changed in a way its checkpoint cannot continue from; the message names the fields."""
    FORBIDDEN = "Forbidden"
    """Failed: the API server refused to create a child (403); the message names the missing permission."""
    RAY_JOB_API_MISSING = "RayJobAPIMissing"
    """Created is False: the cluster serves no ray.io/v1 RayJob (KubeRay is not installed yet)."""
    PATH_NOT_ON_VOLUME = "PathNotOnVolume"
    """EphemeralStorage is True: a path of the spec is on no (lasting) volume."""
    ACTIVE_DEADLINE_EXCEEDED = "ActiveDeadlineExceeded"
    """Failed: an attempt ran past spec.activeDeadlineSeconds (KubeRay's DeadlineExceeded)."""
    PRE_RUNNING_DEADLINE_EXCEEDED = "PreRunningDeadlineExceeded"
    """Failed: the last attempt's Ray cluster did not run within spec.preRunningDeadlineSeconds (pods not
    scheduled, images not pulled or Ray not ready)."""


RESUME_REFUSED_WORDS = "cannot resume from"
"""The runtime's words when it refuses to resume; the operator finds them in the Ray job's message."""


class Condition(SpecModel):
    type: str
    """One of the ConditionType values."""
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(pattern=r"^[A-Za-z]([A-Za-z0-9]*)$")]
    """CamelCase machine-readable cause."""
    message: str = ""
    """Human-readable detail."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation this condition was computed from."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""


class DistillationJobStatus(SpecModel):
    phase: Phase | None = None
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    conditions: list[Condition] = []
    step: Annotated[int, Field(ge=0)] | None = None
    """Optimizer steps done."""
    total_steps: Annotated[int, Field(ge=0)] | None = None
    epoch: Annotated[int, Field(ge=0)] | None = None
    loss: float | None = None
    """Total training loss of the newest logged step."""
    kd_loss: float | None = None
    """Distillation part of that loss."""
    step_time_seconds: float | None = None
    tokens_per_second: float | None = None
    last_checkpoint_step: Annotated[int, Field(ge=0)] | None = None
    generation_pairs: Annotated[int, Field(ge=0)] | None = None
    """(prompt, sample) pairs spec.generation asks the teacher for; set while and after it generates."""
    generated_pairs: Annotated[int, Field(ge=0)] | None = None
    """Of those, the answers kept as training records so far."""
    generation_skipped_pairs: Annotated[int, Field(ge=0)] | None = None
    """Of those, the pairs skipped so far (the run's `<job>.skipped.jsonl` says why)."""
    generation_prompt_tokens: Annotated[int, Field(ge=0)] | None = None
    """Prompt tokens a hosted teacher billed for the generation, every run of it so far."""
    generation_completion_tokens: Annotated[int, Field(ge=0)] | None = None
    """Completion tokens (reasoning included) a hosted teacher billed, every run so far."""
    prepared_records: Annotated[int, Field(ge=0)] | None = None
    """Records tokenised so far by the data preparation before training (spec.data.train's, then
    spec.data.eval's); unset when the job maps a set prepared by an earlier run."""
    preparation_records_per_second: Annotated[float, Field(ge=0)] | None = None
    """The preparation's pace."""
    preparation_eta_seconds: Annotated[float, Field(ge=0)] | None = None
    """Seconds the preparation has left at that pace (by the share of its files read); 0 when done."""
    tracker_urls: Annotated[dict[str, str] | None, Field(alias="trackerURLs")] = None
    """The page of the job's run in each experiment tracker that has one (spec.tracking: mlflow, wandb
    online), by tracker."""
    figures: dict[str, float] | None = None
    """The last step's figures of the job's own loss, by name: GRPO's (mode reinforcement) reward, its
    spread and the KL to the reference; DPO's (mode preference) margin and accuracy."""
    ray_job_name: str | None = None
    """The job's RayJob: its name is derived from the job's (cut to KubeRay's 47 characters with a hash)."""
    config_map_name: str | None = None
    """The ConfigMap holding the job's manifest, which its pods read."""
    dashboard_url: Annotated[str | None, Field(alias="dashboardURL")] = None
    start_time: str | None = None
    completion_time: str | None = None
