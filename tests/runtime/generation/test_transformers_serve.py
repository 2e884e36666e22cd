"""The endpoint path against a real OpenAI-compatible server: `transformers serve` (the transformers release
the venv installs) serving the tiny teacher on loopback, one server for the module.

What the tests rely on, in transformers 5.25 `cli/serving/` (checked in test_cited_sources.py): the
positional model pins the server to it and a request naming another `model` is answered 400
(`model_manager.py:515`); `max_completion_tokens` becomes `max_new_tokens` (`chat_completion.py:276-277`);
its `usage` counts the generated ids (`chat_completion.py:228-233`); `seed` reseeds torch per request
(`utils.py:832-834`); a response that fills max_new_tokens has finish_reason `length` (`utils.py:1279-1285`,
`chat_completion.py:254`). The tiny teacher's weights are random, so it never ends an answer: every response
here is cut off, which is what the skip test needs and why the training test keeps cut-off responses.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubedistill.api.job import DistillationJob, parse_job
from kubedistill.runtime.generation.endpoint import EndpointRefused
from kubedistill.runtime.generation.phase import run_generation
from tests.runtime.conftest import TinyWorld
from tests.runtime.generation.examples import distinct_prompts, example_manifest, write_manifest
from tests.test_bad_inputs import invoke

STARTUP_SECONDS = 180
TRANSFORMERS = shutil.which("transformers", path=str(Path(sys.executable).parent))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served_teacher(tiny: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL (ending in /v1) of `transformers serve` serving the tiny teacher."""
    assert TRANSFORMERS is not None
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [TRANSFORMERS, "serve", str(tiny.teacher), "--device", "cpu", "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        )
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while True:
                assert server.poll() is None, log.read_text()
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            server.terminate()
            server.wait(timeout=30)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return distinct_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", 16)


def _paths(tiny: TinyWorld, prompts: Path, out: Path) -> dict[str, Path]:
    return {
        "demo-output/runs/teacher-sft": tiny.teacher,
        "demo-output/assets/student-init": tiny.student,
        "demo-output/assets/data/student-train.jsonl": prompts,
        "demo-output/runs/generate-from-endpoint": out,
        "demo-output/runs/teacher-made-data": out,
    }


def _example(
    url: str,
    tiny: TinyWorld,
    prompts: Path,
    tmp_path: Path,
    name: str = "generate-from-endpoint",
    **generation: Any,
) -> Path:
    """An endpoint example aimed at the served tiny teacher, in tmp_path/job.yaml, output in tmp_path/out."""
    manifest = example_manifest(
        name,
        _paths(tiny, prompts, tmp_path / "out"),
        endpoint={"baseUrl": url, "model": str(tiny.teacher)},
        **generation,
    )
    return write_manifest(tmp_path / "job.yaml", manifest)


def _steps_job(
    url: str, tiny: TinyWorld, prompts: Path, tmp_path: Path, steps: list[dict[str, Any]]
) -> DistillationJob:
    """The endpoint example's job with these generation steps, its answers 8 tokens long and kept cut off
    (the tiny teacher's random tokens run to maxNewTokens), output in tmp_path/out."""
    manifest = example_manifest(
        "generate-from-endpoint",
        _paths(tiny, prompts, tmp_path / "out"),
        endpoint={"baseUrl": url, "model": str(tiny.teacher)},
        maxNewTokens=8,
        keepTruncated=True,
        steps=steps,
    )
    return parse_job(manifest)


@pytest.mark.usefixtures("ray_session")
def test_the_teacher_made_data_example_expands_asks_rewrites_then_trains_the_student_on_the_last(
    served_teacher: str, tiny: TinyWorld, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    file = _example(served_teacher, tiny, prompts, tmp_path, "teacher-made-data", maxNewTokens=8)
    done = invoke(["run", str(file)])
    assert done.exit_code == 0, done.stderr
    generated = out / "generated"
    expanded = [
        json.loads(line)
        for line in (generated / "demo-teacher-made-data.step0-instructionExpansion.jsonl")
        .read_text()
        .splitlines()
    ]
    answers = [
        json.loads(line) for line in (generated / "demo-teacher-made-data.jsonl").read_text().splitlines()
    ]
    shorter = generated / "demo-teacher-made-data.step2-longToShort.jsonl"
    rewritten = [json.loads(line) for line in shorter.read_text().splitlines()]
    # Every reply fills maxNewTokens with the tiny teacher's random tokens, each a new prompt (its weights
    # are random, so one seed draws much the same tokens whatever the prompt: a repeat is asked once).
    new = {line["messages"][-1]["content"] for line in expanded}
    assert len(expanded) == 16 and len(answers) == len(rewritten) == 16 + len(new) > 16
    assert {line["teacher"] for line in answers + rewritten} == {str(tiny.teacher)}
    assert {line["endpoint"] for line in answers + rewritten} == {served_teacher}
    seeds = {json.loads(line)["messages"][0]["content"] for line in prompts.read_text().splitlines()}
    assert {line["prompt"][-1]["content"] for line in answers} == seeds | new, "each asked once"
    assert answers[0]["sampling"]["step"]["template"] == "Think step by step, then answer.\n{instruction}"
    assert [line["messages"][-1]["content"] for line in rewritten] == [
        line["reply"].strip() for line in rewritten
    ]
    assert [line["messages"][:-1] for line in rewritten] == [line["prompt"] for line in answers]
    assert (
        f"generation step 0 (instructionExpansion): 16 of 16 kept from 16 records in "
        f"{generated / 'demo-teacher-made-data.step0-instructionExpansion.jsonl'} (16 new); skipped: none"
    ) in done.stdout
    n = len(answers)
    assert f"generation step 2 (longToShort): {n} of {n} kept from {n} records in {shorter} ({n} new)" in (
        done.stdout
    )
    generation = json.loads((out / "summary.json").read_text())["generation"]
    assert (generation["pairs"], generation["kept"], generation["skipped"]) == (n, n, {})
    assert [(step["kind"], step["kept"]) for step in generation["steps"]] == [
        ("instructionExpansion", 16),
        ("longToShort", n),
    ]
    assert generation["completion_tokens"] == n * 8, "the answers' tokens, as the server counts them"
    assert (out / "config.json").is_file(), "the student is exported"


def test_refinement_and_short_to_long_rewrite_each_prompt_and_answer_through_the_served_teacher(
    served_teacher: str, tiny: TinyWorld, prompts: Path, tmp_path: Path
) -> None:
    """The two steps the example leaves out, over the same server: every prompt is rewritten before it is
    answered (the answer's record asks the refined prompt), then every answer is rewritten longer."""
    from kubedistill.runtime.generation.synthesis import run_phase

    steps = [
        {"kind": "instructionRefinement", "template": "Say it better: {instruction}", "answerTag": ""},
        {"kind": "shortToLong", "template": "Explain more: {instruction} {answer}"},
    ]
    job = _steps_job(served_teacher, tiny, prompts, tmp_path, steps)
    lines: list[str] = []
    result = run_phase(job, tmp_path / "out", {}, echo=lines.append)
    generated = tmp_path / "out" / "generated"
    refined = [
        json.loads(line)
        for line in (generated / "demo-generate-from-endpoint.step0-instructionRefinement.jsonl")
        .read_text()
        .splitlines()
    ]
    answers = [
        json.loads(line)
        for line in (generated / "demo-generate-from-endpoint.jsonl").read_text().splitlines()
    ]
    longer = [json.loads(line) for line in result.path.read_text().splitlines()]
    assert result.path == generated / "demo-generate-from-endpoint.step1-shortToLong.jsonl"
    assert len(refined) == 16 and len(answers) == len(longer) > 0
    refined_prompts = {record["messages"][-1]["content"] for record in refined}
    assert {answer["prompt"][-1]["content"] for answer in answers} <= refined_prompts, "the refined ones"
    assert [record["messages"][:-1] for record in longer] == [answer["prompt"] for answer in answers]
    assert [record["messages"][-1]["content"] for record in longer] == [
        record["reply"].strip() for record in longer
    ]
    assert lines[0].startswith("generation step 0 (instructionRefinement): 16 of 16 kept from 16 records")
    assert lines[-1].startswith(f"generation step 1 (shortToLong): {len(longer)} of {len(longer)} kept")


def test_a_judge_over_the_served_teacher_lists_every_reply_it_cannot_score_and_stops_naming_the_step(
    served_teacher: str, tiny: TinyWorld, prompts: Path, tmp_path: Path
) -> None:
    from kubedistill.runtime.generation.synthesis import StepFailed, run_phase

    # EasyDistill's judge prompt (the default) is longer than the tiny teacher's 1024 positions.
    judge = {"kind": "judge", "threshold": 0, "template": "Score it 0-9 as <score>N</score>: {answer}"}
    job = _steps_job(served_teacher, tiny, prompts, tmp_path, [judge])
    lines: list[str] = []
    with pytest.raises(StepFailed) as failed:
        run_phase(job, tmp_path / "out", {}, echo=lines.append)
    skipped = tmp_path / "out" / "generated" / "demo-generate-from-endpoint.step0-judge.skipped.jsonl"
    assert str(failed.value).startswith("spec.generation.steps[0]: no record was kept")
    reasons = [json.loads(line) for line in skipped.read_text().splitlines()]
    assert {reason["reason"] for reason in reasons} == {"unscored"} and len(reasons) == 16
    assert all(reason["detail"].startswith("no <score>N</score> in the reply: ") for reason in reasons)
    assert lines[-1].startswith("generation step 0 (judge): 0 of 16 kept from 16 records")


def test_a_step_whose_prompt_the_server_refuses_stops_the_phase_naming_the_step(
    served_teacher: str, tiny: TinyWorld, prompts: Path, tmp_path: Path
) -> None:
    from kubedistill.runtime.generation.synthesis import run_phase

    job = _steps_job(served_teacher, tiny, prompts, tmp_path, [{"kind": "judge", "threshold": 5}])
    with pytest.raises(EndpointRefused) as refused:
        run_phase(job, tmp_path / "out", {}, echo=lambda line: None)
    message = str(refused.value)
    assert "HTTP 400: " in message and "but the model takes at most 1024" in message, (
        "EasyDistill's judge prompt is longer than the tiny teacher's positions"
    )
    assert message.endswith("(asked by spec.generation.steps[0], judge)")


def test_cut_off_answers_are_skipped_and_counted_and_none_left_fails_naming_the_file(
    served_teacher: str, tiny: TinyWorld, prompts: Path, tmp_path: Path
) -> None:
    file = _example(served_teacher, tiny, prompts, tmp_path, maxNewTokens=4)
    done = invoke(["run", str(file)])
    skipped = tmp_path / "out" / "generated" / "demo-generate-from-endpoint.skipped.jsonl"
    assert done.exit_code == 1
    assert "skipped: 16 length" in done.stdout
    assert done.stderr.splitlines()[-1] == (
        f"{file}: spec.generation: no response was kept (see {skipped}); nothing to train on"
    )
    assert {json.loads(line)["reason"] for line in skipped.read_text().splitlines()} == {"length"}


def test_a_model_the_server_does_not_serve_stops_the_phase_with_the_servers_message(
    served_teacher: str, tiny: TinyWorld, prompts: Path, tmp_path: Path
) -> None:

    manifest = example_manifest(
        "generate-from-endpoint",
        _paths(tiny, prompts, tmp_path / "out"),
        endpoint={"baseUrl": served_teacher, "model": "another-model", "maxRetries": 0},
    )
    with pytest.raises(EndpointRefused) as refused:
        run_generation(parse_job(manifest), tmp_path / "out", {})
    message = str(refused.value)
    assert message.startswith(
        f"spec.generation.endpoint: {served_teacher}/chat/completions refused the first "
    )
    assert "HTTP 400: " in message and "pinned to" in message
