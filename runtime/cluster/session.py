"""Attaching the driver to Ray: the cluster named by RAY_ADDRESS (inside a RayJob), else a local one."""

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_watchdog: subprocess.Popen | None = None
"""Stops the local Ray's processes once this one exits, however it exits (`ray_watchdog`)."""


def connect(num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    # Token authentication (Ray >= 2.50) would write ~/.ray/auth_token on every laptop run; inside a
    # RayJob the cluster's own settings apply.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if os.environ.get("RAY_ADDRESS"):
        with _sigterm_left_to_the_driver():
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    _start_watchdog()
    with _sigterm_left_to_the_driver():
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=True,
            logging_level=logging.WARNING,
        )


def disconnect() -> None:
    """Leave Ray: a local one this process started is stopped (`ray.shutdown`), a cluster's is only left.

    Ray's shutdown stops the GCS before the autoscaler's monitor, whose SIGTERM handler then reports to the
    stopped GCS until Ray kills it a second later (`ray/_private/node.py:2060-2086` and
    `ray/autoscaler/_private/monitor.py:588-596`, Ray 2.60): a local Ray has nothing to autoscale, so the
    monitor is killed first and the run ends a second sooner. Called explicitly, the shutdown also skips
    the half second Ray's exit hook sleeps for late worker logs.
    """
    import ray
    from ray._private import worker

    if not ray.is_initialized():
        return
    node = worker._global_node
    if _watchdog is not None and node is not None:
        node.kill_monitor(check_alive=False)
    ray.shutdown()


@contextmanager
def _sigterm_left_to_the_driver() -> Iterator[None]:
    """Around `ray.init`: the driver's SIGTERM handler stays its own (Ray's would `sys.exit` at once), and the
    processes a local Ray starts, which share the driver's process group, are born with SIGTERM blocked, as
    Ray blocks SIGINT in them (`ray/_private/services.py:1049`, Ray 2.60): a SIGTERM to the group (a
    container's stop, a terminal's `kill -TERM -PGID`) reaches the driver alone, which ends the step and
    checkpoints before it stops them. Ray stops its processes with SIGKILL, which no mask blocks."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        if handler is not None:  # None: a handler set outside Python, which Ray's did not replace
            signal.signal(signal.SIGTERM, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _start_watchdog() -> None:
    global _watchdog
    if _watchdog is None:
        # Our end of its stdin pipe stays open for as long as this process lives: its closing is the signal.
        _watchdog = subprocess.Popen(
            [sys.executable, "-I", "-m", "kubedistill.runtime.cluster.watchdog", str(os.getpid())],
            stdin=subprocess.PIPE,
        )
