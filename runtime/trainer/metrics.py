"""The trainer's Prometheus metrics, served by the driver on the Ray head (the operator reads them).

Names, kinds and help texts come from `kubedistill.api.telemetry`, the contract with the operator; the only
labels are the job's namespace and name (`telemetry.LABELS`).
"""

import logging
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubedistill.api import telemetry
from kubedistill.api.job import DistillationJob
from kubedistill.api.telemetry import Kind, Metric
from kubedistill.runtime.trainer.records import EvalRecord, TrainRecord

if TYPE_CHECKING:
    from kubedistill.runtime.data.prepare import PrepareProgress
    from kubedistill.runtime.generation.phase import GenerationProgress

log = logging.getLogger(__name__)

LOCAL_NAMESPACE = "local"
"""The namespace label of a run outside Kubernetes, of a manifest without one."""
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


def pod_namespace(job: DistillationJob, environ: Mapping[str, str]) -> str | None:
    """The namespace the operator matches the trainer's series on: the pod's own (the downward API in
    $KUBEDISTILL_NAMESPACE), else the manifest's; None for a local run of a manifest without one."""
    return environ.get(telemetry.NAMESPACE_ENV) or job.metadata.namespace


class TrainerMetrics:
    def __init__(self, namespace: str, job: str) -> None:
        self.registry = CollectorRegistry()
        self._labels = {telemetry.NAMESPACE_LABEL: namespace, telemetry.JOB_LABEL: job}
        labels = list(telemetry.LABELS)
        # Every series exists from the start (a labelled metric is exported only once its child is), so
        # scrapers see the full set; a gauge with no value yet reads NaN, which the operator skips.
        # prometheus_client appends `_total` to counters itself.
        self._gauges = {
            m.name: Gauge(m.name, m.help, labels, registry=self.registry).labels(**self._labels)
            for m in telemetry.ALL
            if m.kind == Kind.GAUGE
        }
        self._counters = {
            m.name: Counter(m.name.removesuffix("_total"), m.help, labels, registry=self.registry).labels(
                **self._labels
            )
            for m in telemetry.ALL
            if m.kind == Kind.COUNTER
        }
        self._histograms = {
            m.name: Histogram(m.name, m.help, labels, buckets=STEP_BUCKETS, registry=self.registry).labels(
                **self._labels
            )
            for m in telemetry.ALL
            if m.kind == Kind.HISTOGRAM
        }
        for gauge in self._gauges.values():
            gauge.set(float("nan"))
        self.port: int | None = None
        """The port /metrics is served on, once `serve` ran."""

    def set(self, metric: Metric, value: float) -> None:
        self._gauges[metric.name].set(value)

    def add(self, metric: Metric, amount: float) -> None:
        if amount:
            self._counters[metric.name].inc(amount)

    def observe(self, metric: Metric, value: float) -> None:
        self._histograms[metric.name].observe(value)

    def set_tracker_url(self, tracker: str, url: str) -> None:
        """The page of a tracker's run (`telemetry.TRACKER_RUN`), which the operator puts in the status."""
        if not hasattr(self, "_tracker_runs"):
            labels = [*telemetry.LABELS, *telemetry.TRACKER_LABELS]
            metric = telemetry.TRACKER_RUN
            self._tracker_runs = Gauge(metric.name, metric.help, labels, registry=self.registry)
        self._tracker_runs.labels(**self._labels, tracker=tracker, url=url).set(1)

    def set_figure(self, name: str, value: float) -> None:
        """One of the algorithm's figures of the last step (`telemetry.STEP_FIGURE`), which the operator puts
        in the status."""
        if not hasattr(self, "_figures"):
            metric = telemetry.STEP_FIGURE
            labels = [*telemetry.LABELS, telemetry.FIGURE_LABEL]
            self._figures = Gauge(metric.name, metric.help, labels, registry=self.registry)
        self._figures.labels(**self._labels, figure=name).set(value)

    def serve(self, port: int | None = None) -> int:
        """Serve /metrics over HTTP; port from KUBEDISTILL_METRICS_PORT (0 picks a free one). Returns it."""
        if port is None:
            port = int(os.environ.get(telemetry.METRICS_PORT_ENV, telemetry.DEFAULT_METRICS_PORT))
        server, _ = start_http_server(port, registry=self.registry)
        self._server = server
        self.port = int(server.server_port)
        return self.port

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
            self._server = None


def serve_metrics(metrics: TrainerMetrics, port: int | None, asked: int | None) -> int:
    """Serve /metrics on `port` (None: $KUBEDISTILL_METRICS_PORT, else the default); `asked`: the port
    someone asked for, which is theirs to fix when busy, where the default gives way to a free one. Quiet:
    the caller says where (`announce`) once its output goes to the run's log, so that a job refused before it
    trains prints its refusal alone."""
    try:
        served = metrics.serve(port)
    except OSError as error:
        if asked is not None:
            raise
        served = metrics.serve(0)
        log.warning("metrics port busy (%s); serving /metrics on port %d instead", error, served)
    return served


def announce(metrics: TrainerMetrics) -> None:
    log.info("serving /metrics on port %d", metrics.port)


def publish_generation(metrics: TrainerMetrics, progress: "GenerationProgress") -> None:
    metrics.set(telemetry.GENERATION_PAIRS, progress.pairs)
    metrics.set(telemetry.GENERATION_KEPT_PAIRS, progress.kept)
    metrics.set(telemetry.GENERATION_SKIPPED_PAIRS, progress.skipped.total())
    metrics.set(telemetry.GENERATION_PROMPT_TOKENS, progress.usage.prompt_tokens)
    metrics.set(telemetry.GENERATION_COMPLETION_TOKENS, progress.usage.completion_tokens)


def publish_preparation(metrics: TrainerMetrics, progress: "PrepareProgress") -> None:
    metrics.set(telemetry.PREPARE_RECORDS, progress.records)
    metrics.set(telemetry.PREPARE_TOKENS, progress.tokens)
    metrics.set(telemetry.PREPARE_RECORDS_PER_SECOND, progress.records_per_second)
    if progress.total_bytes is not None and progress.read_bytes is not None:
        metrics.set(telemetry.PREPARE_READ_BYTES, progress.read_bytes)
        metrics.set(telemetry.PREPARE_SOURCE_BYTES, progress.total_bytes)
    eta = progress.eta_seconds
    if eta is not None:
        metrics.set(telemetry.PREPARE_ETA_SECONDS, eta)


def publish_step(metrics: TrainerMetrics, record: TrainRecord, total_steps: int) -> None:
    metrics.set(telemetry.STEP, record.step)
    metrics.set(telemetry.TOTAL_STEPS, total_steps)
    metrics.set(telemetry.EPOCH, record.epoch)
    metrics.set(telemetry.LOSS, record.loss)
    metrics.set(telemetry.KD_LOSS, record.kd_loss)
    metrics.set(telemetry.CE_LOSS, record.ce_loss)
    metrics.observe(telemetry.STEP_SECONDS, record.step_seconds)
    metrics.set(telemetry.LAST_STEP_SECONDS, record.step_seconds)
    metrics.set(telemetry.TOKENS_PER_SECOND, record.tokens_per_second)
    metrics.observe(telemetry.TEACHER_SECONDS, record.teacher_seconds)
    metrics.add(telemetry.TRANSFER_BYTES, record.transfer_bytes)
    metrics.set(telemetry.LEARNING_RATE, record.learning_rate)
    if math.isfinite(record.grad_norm):
        metrics.set(telemetry.GRAD_NORM, record.grad_norm)
    metrics.add(telemetry.SKIPPED_STEPS, int(record.skipped))
    for name, value in record.figures.items():
        if math.isfinite(value):
            metrics.set_figure(name, value)


def publish_eval(metrics: TrainerMetrics, record: EvalRecord) -> None:
    metrics.set(telemetry.EVAL_LOSS, record.eval_ce_loss)
    if record.eval_kd_divergence is not None:
        metrics.set(telemetry.EVAL_KD_DIVERGENCE, record.eval_kd_divergence)
    if record.eval_teacher_agreement is not None:
        metrics.set(telemetry.EVAL_TEACHER_AGREEMENT, record.eval_teacher_agreement)
