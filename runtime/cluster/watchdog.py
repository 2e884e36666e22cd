"""Stops the local Ray of a `kubedistill run` that died without stopping it (kill -9, an OOM kill).

Ray ties its GCS and raylet to the driver (PR_SET_PDEATHSIG, `ray/_private/services.py:1050`), but not the
workers and agents the raylet starts: after a kill -9 they live on for minutes, holding their ports and
memory. This process is started by the driver with a pipe on its stdin; while the driver lives it notes the
driver's descendants every half second, and when the pipe closes (the driver exited, however it exited) it
kills those that are still there.

Run as `python -I -m kubedistill.runtime.cluster.watchdog PID`: isolated, so that a working directory holding
this repository's `operator/` folder cannot shadow the standard library.
"""

import signal
import sys
import threading

import psutil

POLL_SECONDS = 0.5


def descendants(pid: int) -> dict[int, float]:
    """pid -> start time of every living descendant of `pid` (the start time tells a reused pid apart)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    found = {}
    for child in children:
        try:
            found[child.pid] = child.create_time()
        except psutil.Error:
            continue
    return found


def kill_all(processes: dict[int, float]) -> None:
    for pid, started in processes.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started:
                process.kill()
        except psutil.Error:
            continue


def watch(driver: int) -> None:
    own = psutil.Process().pid
    seen: dict[int, float] = {}
    gone = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.buffer.read()
        gone.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    while not gone.wait(POLL_SECONDS):
        seen.update(descendants(driver))
        seen.pop(own, None)
    kill_all(seen)


def main() -> None:
    # Ctrl-C and a SIGTERM to the process group reach this process too: the driver handles them, and this
    # process must outlive it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    watch(int(sys.argv[1]))


if __name__ == "__main__":
    main()
