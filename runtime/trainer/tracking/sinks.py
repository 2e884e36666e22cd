"""The trackers of a run behind one object: each is fed on a thread of its own, and none can stop training.

The training loop hands every call to `Trackers` and goes on: a queue per tracker, drained by a thread per
tracker, so a slow or unreachable server (MLflow's client retries a failed request for minutes) holds up
neither the steps nor the other trackers. A failed call is logged and counted
(`kubedistill_tracker_errors_total`); a tracker that fails `GIVE_UP_AFTER` calls in a row, or whose queue is
full, is dropped with one warning, and the run goes on with `metrics.jsonl` (which has everything) and the
others. A days-long job is never ended by its tracker.

Which run a tracker writes to is kept in `<output>/tracking.json`: a resumed job (one that goes on from a
checkpoint) continues the runs named there; a job that starts from step 0 starts new ones.
"""

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kubedistill.api.tracking import Tracker
from kubedistill.runtime.trainer.rollouts import RolloutRecord

log = logging.getLogger(__name__)

RUNS_FILE = "tracking.json"
GIVE_UP_AFTER = 5
"""Failed calls in a row after which a tracker is dropped for the rest of the run."""
QUEUE_LENGTH = 10_000
"""Calls waiting per tracker (steps, evals, rounds) before it counts as stuck and is dropped."""
CLOSE_TIMEOUT_SECONDS = 1800.0
"""How long the end of a run waits for a tracker's last calls (the student's upload among them)."""
STOP_TIMEOUT_SECONDS = 30.0
"""How long a run that stops early (Ctrl-C, SIGTERM, a failure) waits for them: it has a checkpoint to
resume from, and Kubernetes' grace period is running."""


class Sink(Protocol):
    """One tracker's run. `run_id` and `url` are known once it is open."""

    tracker: Tracker
    run_id: str
    url: str | None

    def log(self, step: int, scalars: Mapping[str, float], texts: Mapping[str, str]) -> None: ...

    def rollouts(self, step: int, records: Sequence[RolloutRecord]) -> None: ...

    def summary(self, summary: Mapping[str, Any]) -> None: ...

    def upload(self, files: Sequence[Path], name: str) -> None: ...

    def close(self, succeeded: bool) -> None: ...


@dataclass(frozen=True)
class TrackerFailure:
    tracker: Tracker
    error: str


def read_runs(output_dir: Path) -> dict[str, str]:
    """The run of each tracker the job wrote to before (`tracking.json`), by tracker name."""
    path = output_dir / RUNS_FILE
    if not path.is_file():
        return {}
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return {str(key): str(value) for key, value in runs.items()} if isinstance(runs, dict) else {}


def write_runs(output_dir: Path, runs: Mapping[str, str]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUNS_FILE).write_text(json.dumps(dict(runs), indent=2), encoding="utf-8")


class _Worker:
    """One tracker's queue and thread."""

    def __init__(self, sink: Sink, on_error: Callable[[TrackerFailure], None]) -> None:
        self.sink = sink
        self._on_error = on_error
        self._calls: queue.Queue[Callable[[], None] | None] = queue.Queue(QUEUE_LENGTH)
        self._failures = 0
        self.dropped = False
        self._thread = threading.Thread(target=self._drain, name=f"tracker-{sink.tracker}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._calls.qsize()

    def submit(self, call: Callable[[], None]) -> None:
        if self.dropped:
            return
        try:
            self._calls.put_nowait(call)
        except queue.Full:
            self._drop(f"{QUEUE_LENGTH} calls waiting: the tracker does not keep up")

    def finish(self, timeout: float) -> None:
        """Wait for the calls sent so far (`timeout` at most); a dropped tracker is not waited for: its
        waiting calls are thrown away, and its thread (a daemon) ends once a call it hangs in returns."""
        if self.dropped:
            while not self._calls.empty():
                self._calls.get_nowait()
            self._calls.put_nowait(None)
            return
        started = time.monotonic()
        with contextlib.suppress(queue.Full):  # a tracker that hangs: waited for below, then left
            self._calls.put(None, timeout=timeout)
        self._thread.join(max(0.0, timeout - (time.monotonic() - started)))
        if self._thread.is_alive():
            log.warning(
                "tracker %s: still busy after %.0f s at the end of the run; left", self.sink.tracker, timeout
            )

    def _drain(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            if self.dropped:
                continue
            try:
                call()
                self._failures = 0
            except Exception as error:  # any failure of a tracker is the tracker's, never the run's
                self._failures += 1
                failure = TrackerFailure(self.sink.tracker, f"{type(error).__name__}: {error}")
                self._on_error(failure)
                log.warning(
                    "tracker %s failed (%d in a row): %s", failure.tracker, self._failures, failure.error
                )
                if self._failures >= GIVE_UP_AFTER:
                    self._drop(f"{GIVE_UP_AFTER} failures in a row")

    def _drop(self, why: str) -> None:
        if not self.dropped:
            self.dropped = True
            log.warning(
                "tracker %s dropped for the rest of the run (%s); metrics.jsonl keeps every record",
                self.sink.tracker,
                why,
            )


class Trackers:
    """Every tracker of the run, fed alike; empty when spec.tracking names none."""

    def __init__(self, sinks: Sequence[Sink], on_error: Callable[[TrackerFailure], None]) -> None:
        self._workers = [_Worker(sink, on_error) for sink in sinks]

    @property
    def urls(self) -> dict[str, str]:
        return {str(w.sink.tracker): w.sink.url for w in self._workers if w.sink.url}

    def record(self, line: Mapping[str, Any]) -> None:
        """A record of `metrics.jsonl`, as written there."""
        from kubedistill.runtime.trainer.tracking.records import scalars, texts

        step, values, words = int(line["step"]), scalars(line), texts(line)
        for worker in self._workers:
            worker.submit(lambda sink=worker.sink: sink.log(step, values, words))

    def rollouts(self, step: int, records: Sequence[RolloutRecord]) -> None:
        for worker in self._workers:
            worker.submit(lambda sink=worker.sink: sink.rollouts(step, records))

    def summary(self, summary: Mapping[str, Any]) -> None:
        for worker in self._workers:
            worker.submit(lambda sink=worker.sink: sink.summary(summary))

    def upload(self, files: Sequence[Path], name: str) -> None:
        for worker in self._workers:
            worker.submit(lambda sink=worker.sink: sink.upload(files, name))

    def close(self, succeeded: bool, timeout: float | None = None) -> None:
        """Send each tracker's last calls and end its run (finished, or killed: a resume reopens it), waiting
        `timeout` at most (default: `CLOSE_TIMEOUT_SECONDS` for a finished run, `STOP_TIMEOUT_SECONDS`
        otherwise)."""
        if timeout is None:
            timeout = CLOSE_TIMEOUT_SECONDS if succeeded else STOP_TIMEOUT_SECONDS
        for worker in self._workers:
            worker.submit(lambda sink=worker.sink: sink.close(succeeded))
            if worker.pending > 1:
                log.info("tracker %s: sending its last %d calls", worker.sink.tracker, worker.pending)
        for worker in self._workers:
            worker.finish(timeout)
        self._workers = []
