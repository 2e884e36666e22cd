"""The demo compares students of equal steps only: an output reused from an earlier run counts only when it
holds a finished run of the steps the job runs now."""

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from kubedistill.api import parse_job
from kubedistill.runtime.demo import run as demo
from tests.runtime.conftest import TinyWorld, job_manifest

pytestmark = pytest.mark.usefixtures("ray_session")


def _job(tiny: TinyWorld, output: Path, **training: object):
    return parse_job(job_manifest(tiny, "trainer-test", training=training, output={"path": str(output)}))


def _console() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, width=200), text


@pytest.fixture(scope="module")
def retrained(
    straight_run: Path, tiny: TinyWorld, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The 6-step reference run reused as the output of a job that now runs 2 steps."""
    output = tmp_path_factory.mktemp("reused") / "offpolicy"
    shutil.copytree(straight_run, output)
    console, text = _console()
    demo.train_or_reuse("offpolicy", _job(tiny, output, maxSteps=2), console)
    return output, text.getvalue()


def test_a_finished_run_of_the_jobs_steps_is_reused(
    straight_run: Path, tiny: TinyWorld, tmp_path: Path
) -> None:
    output = tmp_path / "offpolicy"
    shutil.copytree(straight_run, output)
    before = (output / "summary.json").read_text()
    console, text = _console()
    demo.train_or_reuse("offpolicy", _job(tiny, output), console)
    assert f"offpolicy: already trained, 6 steps ({output})" in text.getvalue()
    assert (output / "summary.json").read_text() == before


def test_a_run_of_other_steps_is_kept_aside_and_the_job_trained_again(retrained: tuple[Path, str]) -> None:
    output, printed = retrained
    assert demo.finished_steps(output) == 2
    aside = output.with_name("offpolicy.6-steps")
    assert demo.finished_steps(aside) == 6, "the old run is kept"
    assert f"offpolicy: {output} holds a run of 6 steps, the job runs 2: training again" in printed


def test_students_of_different_steps_are_never_compared(
    straight_run: Path, retrained: tuple[Path, str], tmp_path: Path
) -> None:
    assets = demo.Assets(tmp_path)
    shutil.copytree(straight_run, assets.run_dir("offpolicy"))
    shutil.copytree(retrained[0], assets.run_dir("student-sft"))
    with pytest.raises(ValueError, match=r"^the distilled student ran 6 steps and the fine-tuned one 2; "):
        demo.compare(tmp_path / "examples", assets)
    assert json.loads((assets.run_dir("student-sft") / "summary.json").read_text())["steps"] == 2
