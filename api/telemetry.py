"""Names of the trainer's Prometheus metrics: the contract between the runtime, which serves them on the
Ray head's `/metrics`, and the operator, which reads them into the DistillationJob's status.

Base units in the names, labels bounded (the job's name and namespace; never step or pod).
"""

from dataclasses import dataclass
from enum import StrEnum

METRICS_PORT_ENV = "KUBEDISTILL_METRICS_PORT"
DEFAULT_METRICS_PORT = 8090
"""Not 8080: on a KubeRay head that is Ray's own metrics exporter, in the same container as the trainer."""
NAMESPACE_ENV = "KUBEDISTILL_NAMESPACE"
"""The pod's namespace (downward API, set on every Ray container): the trainer's namespace label."""

JOB_LABEL = "distillationjob"
NAMESPACE_LABEL = "distillationjob_namespace"
# Not `job`/`namespace`: a ServiceMonitor or PodMonitor scrape adds those (and `pod`, `service`, ...) as
# target labels, and Prometheus renames a clashing exported label to `exported_<name>` unless honorLabels
# is set, which in turn would drop Prometheus' own. These names survive either way.
LABELS = (NAMESPACE_LABEL, JOB_LABEL)


class Kind(StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    help: str


STEP = Metric("kubedistill_step", Kind.GAUGE, "Optimizer steps done.")
TOTAL_STEPS = Metric("kubedistill_total_steps", Kind.GAUGE, "Optimizer steps the job will run.")
EPOCH = Metric("kubedistill_epoch", Kind.GAUGE, "Current epoch, from 0.")
LOSS = Metric("kubedistill_loss", Kind.GAUGE, "Total training loss of the last step.")
KD_LOSS = Metric("kubedistill_kd_loss", Kind.GAUGE, "Distillation part of the last step's loss.")
CE_LOSS = Metric("kubedistill_ce_loss", Kind.GAUGE, "Cross-entropy part of the last step's loss.")
STEP_SECONDS = Metric("kubedistill_step_seconds", Kind.HISTOGRAM, "Wall time of an optimizer step.")
LAST_STEP_SECONDS = Metric("kubedistill_last_step_seconds", Kind.GAUGE, "Wall time of the last step.")
TOKENS_PER_SECOND = Metric(
    "kubedistill_tokens_per_second", Kind.GAUGE, "Trained tokens per second, last step."
)
TEACHER_SECONDS = Metric("kubedistill_teacher_seconds", Kind.HISTOGRAM, "Teacher inference time per step.")
TRANSFER_BYTES = Metric(
    "kubedistill_transfer_bytes_total", Kind.COUNTER, "Bytes of teacher hidden states sent to the students."
)
LEARNING_RATE = Metric("kubedistill_learning_rate", Kind.GAUGE, "Learning rate of the last step.")
GRAD_NORM = Metric("kubedistill_grad_norm", Kind.GAUGE, "Global gradient norm before clipping, last step.")
LAST_CHECKPOINT_STEP = Metric(
    "kubedistill_last_checkpoint_step", Kind.GAUGE, "Step of the newest checkpoint."
)
BAD_RECORDS = Metric("kubedistill_bad_records_total", Kind.COUNTER, "Malformed data records skipped.")
TRUNCATED_RECORDS = Metric(
    "kubedistill_truncated_records_total",
    Kind.COUNTER,
    "Data records shortened (turns dropped or tokens cut) to fit spec.data.maxLength / promptMaxLength.",
)
SKIPPED_STEPS = Metric(
    "kubedistill_skipped_steps_total", Kind.COUNTER, "Steps skipped for a non-finite loss."
)
EVAL_LOSS = Metric("kubedistill_eval_loss", Kind.GAUGE, "Loss on the eval data, last evaluation.")
EVAL_KD_DIVERGENCE = Metric(
    "kubedistill_eval_kd_divergence",
    Kind.GAUGE,
    "Divergence to the teacher on the eval data, last evaluation.",
)
EVAL_TEACHER_AGREEMENT = Metric(
    "kubedistill_eval_teacher_agreement",
    Kind.GAUGE,
    "Share of eval tokens where student and teacher agree on the most likely next token.",
)
GENERATION_PAIRS = Metric(
    "kubedistill_generation_pairs",
    Kind.GAUGE,
    "(prompt, sample) pairs spec.generation asks the teacher for.",
)
GENERATION_KEPT_PAIRS = Metric(
    "kubedistill_generation_kept_pairs", Kind.GAUGE, "Generated pairs kept as training records so far."
)
GENERATION_SKIPPED_PAIRS = Metric(
    "kubedistill_generation_skipped_pairs",
    Kind.GAUGE,
    "Generated pairs skipped so far (failed, refused, empty, cut off or filtered; <job>.skipped.jsonl).",
)
GENERATION_PROMPT_TOKENS = Metric(
    "kubedistill_generation_prompt_tokens",
    Kind.GAUGE,
    "Prompt tokens an endpoint billed for the generation, every run of it so far.",
)
GENERATION_COMPLETION_TOKENS = Metric(
    "kubedistill_generation_completion_tokens",
    Kind.GAUGE,
    "Completion tokens (reasoning included) an endpoint billed for the generation, every run so far.",
)

TRACKER_ERRORS = Metric(
    "kubedistill_tracker_errors_total",
    Kind.COUNTER,
    "Calls to an experiment tracker (spec.tracking) that failed; training goes on without them.",
)
TRACKER_RUN = Metric(
    "kubedistill_tracker_run_info",
    Kind.GAUGE,
    "1 for each experiment tracker's run, with its page in the `url` label: the status' trackerURLs.",
)
"""Labelled with `TRACKER_LABELS` besides `LABELS`: one series a tracker (three at most), its URL fixed for
the run, like a build_info metric. Not in `ALL`, whose series carry `LABELS` alone."""
STEP_FIGURE = Metric(
    "kubedistill_step_figure",
    Kind.GAUGE,
    "An algorithm's own figure of the last step, by name (GRPO's reward, DPO's margin and accuracy).",
)
"""Labelled with `FIGURE_LABEL` besides `LABELS`: one series a name of the job's algorithm's figures (a
handful, fixed by the algorithm: `Algorithm.figure_names`). Not in `ALL`, whose series carry `LABELS`
alone."""
FIGURE_LABEL = "figure"
TRACKER_LABEL = "tracker"
URL_LABEL = "url"
TRACKER_LABELS = (TRACKER_LABEL, URL_LABEL)
PREPARE_RECORDS = Metric(
    "kubedistill_prepare_records",
    Kind.GAUGE,
    "Records of the data source being prepared (tokenised) so far: spec.data.train's, then spec.data.eval's.",
)
PREPARE_TOKENS = Metric("kubedistill_prepare_tokens", Kind.GAUGE, "Tokens of the records prepared so far.")
PREPARE_RECORDS_PER_SECOND = Metric(
    "kubedistill_prepare_records_per_second", Kind.GAUGE, "Records prepared a second, over the preparation."
)
PREPARE_READ_BYTES = Metric(
    "kubedistill_prepare_read_bytes",
    Kind.GAUGE,
    "Bytes of the data source's files read so far (as stored: compressed, for .gz).",
)
PREPARE_SOURCE_BYTES = Metric(
    "kubedistill_prepare_source_bytes", Kind.GAUGE, "Bytes of the data source's files."
)
PREPARE_ETA_SECONDS = Metric(
    "kubedistill_prepare_eta_seconds",
    Kind.GAUGE,
    "Seconds the preparation has left at its pace so far (by the share of its files read); 0 when done.",
)

ALL = (
    STEP,
    TOTAL_STEPS,
    EPOCH,
    LOSS,
    KD_LOSS,
    CE_LOSS,
    STEP_SECONDS,
    LAST_STEP_SECONDS,
    TOKENS_PER_SECOND,
    TEACHER_SECONDS,
    TRANSFER_BYTES,
    LEARNING_RATE,
    GRAD_NORM,
    LAST_CHECKPOINT_STEP,
    BAD_RECORDS,
    TRUNCATED_RECORDS,
    SKIPPED_STEPS,
    EVAL_LOSS,
    EVAL_KD_DIVERGENCE,
    EVAL_TEACHER_AGREEMENT,
    GENERATION_PAIRS,
    GENERATION_KEPT_PAIRS,
    GENERATION_SKIPPED_PAIRS,
    GENERATION_PROMPT_TOKENS,
    GENERATION_COMPLETION_TOKENS,
    PREPARE_RECORDS,
    PREPARE_TOKENS,
    PREPARE_RECORDS_PER_SECOND,
    PREPARE_READ_BYTES,
    PREPARE_SOURCE_BYTES,
    PREPARE_ETA_SECONDS,
    TRACKER_ERRORS,
)
