"""Attaching the driver to Ray: the cluster named by RAY_ADDRESS (inside a RayJob), else a local one."""

import logging
import os
import subprocess
import sys

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
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    _start_watchdog()
    ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=True,
        logging_level=logging.WARNING,
    )


def _start_watchdog() -> None:
    global _watchdog
    if _watchdog is None:
        # Our end of its stdin pipe stays open for as long as this process lives: its closing is the signal.
        _watchdog = subprocess.Popen(
            [sys.executable, "-I", "-m", "kubedistill.runtime.cluster.watchdog", str(os.getpid())],
            stdin=subprocess.PIPE,
        )
