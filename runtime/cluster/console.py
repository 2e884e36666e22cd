"""What a run shows on the console and what it keeps in its log file.

Ray forwards every worker's stdout and stderr to the driver, which prints them (`log_to_driver`;
`ray/_private/worker.py` `print_logs` -> `global_worker_stdstream_dispatcher` -> `print_to_stdstream`, Ray
2.60). Among them are lines nobody acts on that bury the progress line and the summary: a bar for every model
a worker loads or writes (transformers' "Loading weights", "Writing model shards", "Multi-thread loading
shards"), and each gloo rank's "No backend of type 0 found for Process Group" when its group closes. Those go
to the run's log file only; every other worker line (a warning, a traceback) goes to the console as Ray
prints it, and to the file, as does everything the driver logs.
"""

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RAY_PRINT_HANDLER = "ray_print_logs"
"""The name Ray gives its forwarded-output printer in the dispatcher (`worker.py` `connect`, Ray 2.60)."""
WORKERS_LOGGER = "kubedistill.workers"
"""The Ray workers' forwarded lines, into the log file only."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WHAT_THE_LOG_HOLDS = "all of it; the console leaves out the Ray workers' bars and notices"
"""Said as a run names its log file."""

NOISE = (
    # tqdm's "[elapsed<remaining, rate]" (the rate per second or seconds per unit, `?` before the first):
    # any bar a library draws in a worker, whatever it is named.
    re.compile(r"\[(?:\d+:)?\d+:\d+(?:<[^\],]*)?, [^\]]*(?:/s\b|s/\w)[^\]]*\]"),
    # c10d's warning as a process group without a device backend shuts down (gloo on CPU): nothing to do.
    re.compile(r"No backend of type 0 found for Process Group"),
)

Forwarded = dict[str, Any]
"""A batch of a worker's lines as Ray forwards it: `lines`, `pid`, `actor_name` or `task_name`, `is_err`..."""


def is_noise(line: str) -> bool:
    """Whether a worker's line stays off the console (it still goes to the log file)."""
    return any(pattern.search(line) for pattern in NOISE)


def last_frame(line: str) -> str:
    """A bar redraws itself after a carriage return on one line: the log keeps its last state."""
    return line.rstrip("\r").rsplit("\r", 1)[-1]


def shown(lines: Sequence[str]) -> list[str]:
    return [line for line in lines if not is_noise(line)]


def log_forwarded(batch: Forwarded, workers: logging.Logger) -> None:
    """A batch's lines into the log file, each after the worker it came from. The autoscaler's are left to
    Ray (it prints their events; a status dump every 5 s stays in its session's monitor.log)."""
    if batch.get("pid") == "autoscaler":
        return
    who = batch.get("actor_name") or batch.get("task_name") or ""
    for line in batch.get("lines", []):
        workers.info("(%s pid=%s) %s", who, batch.get("pid"), last_frame(line))


def keep_log(path: Path) -> None:
    """From now on, for as long as this process is connected to Ray: the driver's log records and every
    line Ray forwards from its workers are appended to `path`; the console keeps the driver's records and
    the workers' lines that are not noise. Ray must be connected first (its printer is wrapped, and goes with
    it at `ray.shutdown`). Lasting to the end rather than to the end of training: workers' last lines (a
    process group closing) reach the driver a moment after their actors are gone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    workers = logging.getLogger(WORKERS_LOGGER)
    workers.setLevel(logging.INFO)
    workers.propagate = False  # the root logger's console handler would print them again
    root = logging.getLogger()
    for old in [*workers.handlers]:  # an earlier job's file, in a process that runs several
        workers.removeHandler(old)
        root.removeHandler(old)
        old.close()
    workers.addHandler(handler)
    root.addHandler(handler)
    _filter_ray_printer(workers)


class FilteredPrinter:
    """Ray's printer of forwarded output behind a filter: every line to the log file, the rest to Ray."""

    def __init__(self, printer: Callable[[Forwarded], None], workers: logging.Logger) -> None:
        self.printer = printer
        self._workers = workers

    def __call__(self, batch: Forwarded) -> None:
        log_forwarded(batch, self._workers)
        lines = batch.get("lines", [])
        # Ray prints only the autoscaler's events of its lines, which are for the user.
        kept = lines if batch.get("pid") == "autoscaler" else shown(lines)
        if kept:
            self.printer({**batch, "lines": kept})


def _filter_ray_printer(workers: logging.Logger) -> None:
    """Put a filter in front of Ray's printer of forwarded output. Without a printer
    (`log_to_driver=False`) nothing is forwarded, and nothing changes."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printer: Callable[[Forwarded], None] | None = dict(dispatcher.handlers).get(RAY_PRINT_HANDLER)
    if printer is None:
        return
    if isinstance(printer, FilteredPrinter):  # a second job in one process
        printer = printer.printer
    dispatcher.remove_handler(RAY_PRINT_HANDLER)
    dispatcher.add_handler(RAY_PRINT_HANDLER, FilteredPrinter(printer, workers))
