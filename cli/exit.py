"""How a `kubedistill` command's process ends: at once, once the command is done.

A run's interpreter takes a second or more to tear down (freeing torch's and transformers' modules, Ray's
core worker) after everything the run writes is written: time a user waits at the prompt for nothing. The
command's own work is finished and closed by then (files are written inside `with` blocks, thread pools are
joined, a local Ray is stopped by `kubedistill.runtime.cluster.session.disconnect`), so the process flushes
what it printed and exits with the command's status, skipping the teardown and the exit hooks.
"""

import contextlib
import logging
import os
import sys
from typing import NoReturn


def exit_status(code: object) -> int:
    """The status `sys.exit(code)` ends a process with: None is 0, an int is itself, anything else is 1
    (and is printed to stderr, as Python does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_without_teardown(code: object) -> NoReturn:
    """End the process now with `code`'s status (as `sys.exit` reads it), after flushing the logs and the
    standard streams."""
    status = exit_status(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe or stream has no one left to read it.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)
