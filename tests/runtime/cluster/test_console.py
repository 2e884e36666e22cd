"""What of the Ray workers' output reaches the console: bars and the gloo shutdown notice go to the log file
only, everything else to both (the whole path, through `kubedistill run`: `trainer/test_run.py`)."""

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from tqdm import tqdm

from kubedistill.runtime.cluster.console import (
    RAY_PRINT_HANDLER,
    WORKERS_LOGGER,
    FilteredPrinter,
    Forwarded,
    is_noise,
    keep_log,
    last_frame,
)

GLOO_SHUTDOWN = (
    "[rank0]:[W1206 18:46:35.771878623 ProcessGroup.hpp:1006] Warning: No backend of type 0 found for "
    "Process Group with name undefined. Assuming no hooks are registered. (function hasHooks)"
)
"""As a student rank printed it at the end of a run (torch 2.x, gloo)."""


def _bar_lines(description: str, total: int | None, postfix: str | None = None) -> list[str]:
    """The lines a worker's log file holds after tqdm drew a bar to it (Ray forwards a file line by line)."""
    stream = io.StringIO()
    with tqdm(total=total, desc=description, file=stream, mininterval=0, postfix=postfix) as bar:
        for _ in range(3):
            bar.update(1)
    # Ray's log monitor reads a worker's file by "\n" alone: one line holds every "\r" redraw of a bar.
    return stream.getvalue().split("\n")[:-1]


@pytest.mark.parametrize(
    ("description", "total", "postfix"),
    [
        ("Loading weights", 3, None),
        ("Writing model shards", None, None),  # no total: "3it [00:00, 1.2it/s]"
        ("Multi-thread loading shards", 3, "Materializing param=model.embed_tokens.weight"),
    ],
)
def test_a_bar_tqdm_draws_in_a_worker_is_noise(
    description: str, total: int | None, postfix: str | None
) -> None:
    lines = _bar_lines(description, total, postfix)
    assert lines and all(is_noise(line) for line in lines), lines


def test_the_gloo_shutdown_notice_is_noise() -> None:
    assert is_noise(GLOO_SHUTDOWN)


@pytest.mark.parametrize(
    "line",
    [
        "WARNING kubedistill.runtime.student.worker: non-finite loss at step 3",
        "Traceback (most recent call last):",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "[rank1]:[W1206 18:46:35.7 ProcessGroupNCCL.cpp:1] Warning: WorkNCCL timed out after 600000 ms",
        "loss at [00:10] was 1.2",
        "",
    ],
)
def test_what_a_user_may_have_to_act_on_is_not_noise(line: str) -> None:
    assert not is_noise(line)


def test_the_log_keeps_a_bars_last_state() -> None:
    (line,) = _bar_lines("Loading weights", 3)
    assert last_frame(line).startswith("Loading weights: 100%|")
    assert "\r" not in last_frame(line)


class _Printed:
    def __init__(self) -> None:
        self.batches: list[Forwarded] = []

    def __call__(self, batch: Forwarded) -> None:
        self.batches.append(batch)


def _batch(pid: str, lines: list[str]) -> Forwarded:
    return {"pid": pid, "actor_name": "StudentActor", "is_err": True, "ip": "10.0.0.1", "lines": lines}


def test_ray_prints_what_is_not_noise_and_the_log_gets_every_line(caplog: pytest.LogCaptureFixture) -> None:
    printed = _Printed()
    workers = logging.getLogger("kubedistill.workers.test")
    (bar,) = _bar_lines("Loading weights", 3)
    with caplog.at_level(logging.INFO, logger=workers.name):
        FilteredPrinter(printed, workers)(_batch("7", [bar, "WARNING something to act on", GLOO_SHUTDOWN]))
        FilteredPrinter(printed, workers)(_batch("8", [GLOO_SHUTDOWN]))
    assert printed.batches == [_batch("7", ["WARNING something to act on"])]
    assert caplog.messages == [
        f"(StudentActor pid=7) {last_frame(bar)}",
        "(StudentActor pid=7) WARNING something to act on",
        f"(StudentActor pid=7) {GLOO_SHUTDOWN}",
        f"(StudentActor pid=8) {GLOO_SHUTDOWN}",
    ]


def test_the_autoscalers_lines_are_left_to_ray(caplog: pytest.LogCaptureFixture) -> None:
    """Ray prints their events only; its status dumps every 5 s are in Ray's own monitor.log."""
    printed = _Printed()
    workers = logging.getLogger("kubedistill.workers.test")
    batch = _batch(
        "autoscaler", ["======== Autoscaler status ========", "Loading weights: 100%| [00:01, 3it/s]"]
    )
    with caplog.at_level(logging.INFO, logger=workers.name):
        FilteredPrinter(printed, workers)(batch)
    assert printed.batches == [batch]
    assert caplog.messages == []


@pytest.fixture
def ray_printer() -> Iterator[_Printed]:
    """A stand-in for the printer `ray.init(log_to_driver=True)` puts in Ray's dispatcher, under its name."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printed = _Printed()
    dispatcher.add_handler(RAY_PRINT_HANDLER, printed)
    yield printed
    dispatcher.remove_handler(RAY_PRINT_HANDLER)
    workers = logging.getLogger(WORKERS_LOGGER)
    for handler in [*workers.handlers]:
        workers.removeHandler(handler)
        logging.getLogger().removeHandler(handler)
        handler.close()


def test_a_kept_log_gets_the_drivers_records_and_the_workers_lines_once_per_job(
    ray_printer: _Printed, tmp_path: Path
) -> None:
    """Two jobs in one process (the demo runs three): the second log replaces the first, and Ray's printer
    is filtered once, not twice."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    for job in ("first", "second"):
        keep_log(tmp_path / job / "run.log")
        logging.getLogger("kubedistill.test").warning("%s: a driver's warning", job)
        dispatcher.emit(_batch("7", [GLOO_SHUTDOWN, f"{job}: a worker's warning"]))
    assert ray_printer.batches == [_batch("7", [f"{job}: a worker's warning"]) for job in ("first", "second")]
    for job in ("first", "second"):
        lines = (tmp_path / job / "run.log").read_text().splitlines()
        assert [line.split(" ", 2)[2] for line in lines] == [
            f"WARNING kubedistill.test: {job}: a driver's warning",
            f"INFO kubedistill.workers: (StudentActor pid=7) {GLOO_SHUTDOWN}",
            f"INFO kubedistill.workers: (StudentActor pid=7) {job}: a worker's warning",
        ]
