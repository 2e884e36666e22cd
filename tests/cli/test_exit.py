"""How the installed command's process ends: with the command's status and everything it printed, but
without Python's exit hooks and teardown."""

import subprocess
import sys
import textwrap

import pytest

from kubedistill.cli.exit import exit_status


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (3, 3), (130, 130), ("a message", 1)])
def test_the_status_is_the_one_sys_exit_gives(code: object, status: int) -> None:
    assert exit_status(code) == status


def _ending(code: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(
        f"""
        import atexit, logging, sys
        from kubedistill.cli.exit import exit_without_teardown
        atexit.register(lambda: print("exit hook ran"))
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        logging.getLogger("kubedistill").info("logged")
        print("printed", end="")   # no newline: still in the buffer of a pipe
        sys.stderr.write("written")
        exit_without_teardown({code})
        """
    )
    # Run from "/": the repository root's operator/ would shadow the standard library's.
    command = [sys.executable, "-c", script]
    return subprocess.run(command, cwd="/", capture_output=True, text=True, check=False)


def test_what_was_printed_and_logged_arrives_and_no_exit_hook_runs() -> None:
    done = _ending("0")
    assert done.returncode == 0
    assert done.stdout == "printed"
    assert done.stderr == "logged\nwritten"


def test_a_failing_status_and_a_message_end_the_process_as_sys_exit_would() -> None:
    assert _ending("130").returncode == 130
    done = _ending("'spec.teacher: no such model'")
    assert done.returncode == 1
    assert done.stderr.endswith("spec.teacher: no such model\n")
