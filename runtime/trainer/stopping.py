"""SIGTERM: what a pod gets on eviction, preemption, a node drain or `helm uninstall` (and a container on
`docker stop`). The run ends as after Ctrl-C, at a step's end and checkpointed where it can be, instead of in
Ray's default handler (`sys.exit` from `ray.init`) with a checkpoint half written.

The first SIGTERM during training lets the step under way finish; the loop then checkpoints and stops
(`Stopping.requested`). Before the loop runs, or on a second SIGTERM, there is no step worth waiting for and
`Terminated` is raised at once, where Ctrl-C raises `KeyboardInterrupt`.
"""

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

TERMINATED_EXIT_CODE = 128 + signal.SIGTERM
"""What a shell reports for a process SIGTERM ended. Any non-zero exit fails the Ray job, and KubeRay retries
a failed one while `backoffLimit` allows (rayjob_controller.go:346 and rayjob_controller.go:542 at kuberay
feeaf72f); the retry resumes from the checkpoint written on the way out."""


class Terminated(BaseException):
    """SIGTERM ended the run. A BaseException, as KeyboardInterrupt: no `except Exception` may swallow it."""


class Stopping:
    """Whether a SIGTERM asked the run to stop, and whether the training loop is there to stop at a step's
    end (`graceful`)."""

    def __init__(self) -> None:
        self.requested = False
        self.graceful = False

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        if self.graceful and not self.requested:
            self.requested = True
            return
        raise Terminated

    @contextmanager
    def handling_sigterm(self) -> Iterator["Stopping"]:
        """This object handles SIGTERM inside the block (`kubedistill.runtime.cluster.session.connect` keeps
        it so across `ray.init`); the previous handler is back afterwards (the command may run inside a test
        process). Signal handlers belong to the main thread."""
        previous = signal.signal(signal.SIGTERM, self.on_sigterm)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)
