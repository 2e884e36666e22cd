"""The head pod's preStop hook: it finds `kubedistill run`, sends it SIGTERM and waits for it to end."""

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kubedistill.runtime.cluster.stop_driver import is_driver, stop


@pytest.mark.parametrize(
    ("command", "driver"),
    [
        (["/opt/venv/bin/python3", "/opt/venv/bin/kubedistill", "run", "/etc/kubedistill/job.yaml"], True),
        (["kubedistill", "run", "job.yaml", "--restart"], True),
        (["/bin/sh", "-c", "kubedistill run /etc/kubedistill/job.yaml"], False),
        (["python3", "-I", "-m", "kubedistill.runtime.cluster.stop_driver"], False),
        (["kubedistill", "validate", "job.yaml"], False),
        ([], False),
    ],
)
def test_the_driver_is_the_run_command_itself_not_the_shell_that_starts_it(
    command: list[str], driver: bool
) -> None:
    """A shell given SIGTERM would die and leave the run it started going."""
    assert is_driver(command) is driver


def test_the_hook_returns_only_once_the_driver_has_checkpointed_and_ended(tmp_path: Path) -> None:
    """The kubelet sends the pod's own SIGTERM (and stops Ray) when the hook returns."""
    checkpoint = tmp_path / "checkpointed"
    handler = (
        "import pathlib, signal, sys, time\n"
        "def on_sigterm(*_):\n"
        "    time.sleep(1)\n"
        f"    pathlib.Path({str(checkpoint)!r}).touch()\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, on_sigterm)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", handler], stdout=subprocess.PIPE, text=True)
    assert driver.stdout is not None and driver.stdout.readline() == "ready\n"
    started = time.monotonic()
    stop([psutil.Process(driver.pid)])
    assert checkpoint.is_file()
    assert time.monotonic() - started >= 1
    assert driver.poll() is not None, "the driver has ended (the hook reaped it, as its child here)"
