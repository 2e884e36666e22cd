"""Attaching the driver to Ray: the cluster named by RAY_ADDRESS (inside a RayJob), else a local one."""

import logging
import os

log = logging.getLogger(__name__)


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
    ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=True,
        logging_level=logging.WARNING,
    )
