"""The Ray head pod's preStop hook: SIGTERM to `kubedistill run`, then wait until it has ended.

Kubernetes sends a stopped pod's SIGTERM to each container's first process only: on the head, KubeRay's
`ray start`, which stops Ray at once. The job's driver is not that process's child in any way a signal
follows: KubeRay's job submission runs it in a session of its own (`ray/dashboard/modules/job/
job_supervisor.py:185`, Ray 2.60), and a watcher SIGKILLs that session once the supervisor is gone (`:224`),
without a word. The kubelet runs this hook before that SIGTERM and waits for it, for up to the pod's
`terminationGracePeriodSeconds`: the driver gets the SIGTERM it handles (`runtime/trainer/stopping.py`: its
step ends, is checkpointed, and the run exits 143, which KubeRay retries) while Ray still runs.

Run as `python3 -I -m kubedistill.runtime.cluster.stop_driver`: isolated, as the watchdog is.
"""

import os
import signal
from itertools import pairwise

import psutil


def is_driver(command: list[str]) -> bool:
    """`kubedistill run ...` (the installed command, under whichever interpreter), not a shell that starts it
    nor this hook."""
    return any(
        os.path.basename(word) == "kubedistill" and following == "run"
        for word, following in pairwise(command)
    )


def drivers() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if is_driver(process.info["cmdline"] or []):
            found.append(process)
    return found


def stop(running: list[psutil.Process]) -> None:
    """SIGTERM to each, then wait until all have ended; no timeout of its own: the kubelet ends the hook
    with the grace period."""
    for driver in running:
        try:
            driver.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(running)


if __name__ == "__main__":
    stop(drivers())
