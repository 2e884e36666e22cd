"""The operator's own Prometheus metrics (`kubedistill_operator_*`), served on its metrics port.

Each operator instance has its own registry, so several instances in one process (tests, benchmarks)
count separately. Labels are bounded: handler, result, phase; never a job's name.
"""

import time
from collections import Counter as Tally
from collections.abc import Generator
from contextlib import contextmanager
from enum import StrEnum

import kopf
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubedistill.api.status import Phase


class Result(StrEnum):
    SUCCESS = "success"
    RETRY = "retry"
    """The API server or the cluster was not ready; kopf retries the handler."""
    FAILURE = "failure"
    """The job cannot be acted on (an invalid spec); no retry."""
    ERROR = "error"
    """An unexpected exception."""


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "kubedistill_operator_reconciles_total",
            "Handler runs, by handler and result.",
            ["handler", "result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "kubedistill_operator_errors_total",
            "Handler runs that raised (API errors and unexpected exceptions), by handler.",
            ["handler"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "kubedistill_operator_reconcile_duration_seconds",
            "Wall time of a handler run.",
            ["handler"],
            registry=self.registry,
        )
        self.jobs = Gauge(
            "kubedistill_operator_jobs",
            "DistillationJobs this operator knows, by status.phase.",
            ["phase"],
            registry=self.registry,
        )
        self.scrape_failures = Counter(
            "kubedistill_operator_scrape_failures_total",
            "Failed reads of a trainer's /metrics.",
            registry=self.registry,
        )
        self._phases: Tally[str] = Tally()
        for phase in Phase:
            self.jobs.labels(phase.value).set(0)

    @contextmanager
    def reconcile(self, handler: str) -> Generator[None]:
        """Count and time one handler run; the exception, if any, propagates to kopf."""
        start = time.perf_counter()
        try:
            yield
        except kopf.PermanentError:
            self._count(handler, Result.FAILURE, start)
            raise
        except kopf.TemporaryError:
            self.errors.labels(handler).inc()
            self._count(handler, Result.RETRY, start)
            raise
        except Exception:
            self.errors.labels(handler).inc()
            self._count(handler, Result.ERROR, start)
            raise
        # A cancelled run (kopf stopping a daemon) is no result at all: it falls through uncounted.
        self._count(handler, Result.SUCCESS, start)

    def _count(self, handler: str, result: Result, start: float) -> None:
        self.reconciles.labels(handler, result.value).inc()
        self.duration.labels(handler).observe(time.perf_counter() - start)

    def phase_changed(self, old: str | None, new: str | None) -> None:
        """Move one job between phase counts; None means not counted (unknown or gone)."""
        for phase, step in ((old, -1), (new, +1)):
            if phase:
                self._phases[phase] += step
                self.jobs.labels(phase).set(self._phases[phase])
