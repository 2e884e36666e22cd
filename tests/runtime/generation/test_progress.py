"""What `kubedistill run` shows of a generation while it runs and what it does with a poor one: progress
lines and /metrics (kept, skipped, tokens) as answers arrive, and a phase that keeps fewer answers than
`spec.generation.minKeptFraction` (or leaves failed pairs) fails naming the skipped file and the commonest
reason instead of training on what is left."""

import logging
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubedistill.runtime.generation import phase
from tests.runtime.conftest import TinyWorld
from tests.runtime.generation.examples import example_manifest, write_manifest
from tests.runtime.generation.jobs import endpoint_job, prompt_file
from tests.runtime.generation.scripted_server import completion, scripted_server
from tests.test_bad_inputs import assert_rejected, invoke

PROMPTS = [f"question {i}" for i in range(10)]
CUT_OFF = completion("and then", finish_reason="length")
SCRIPT = {"question 2": [completion("")]} | {prompt: [CUT_OFF] for prompt in PROMPTS[3:]}
"""Two answers kept, one empty, seven cut off."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _job(tiny: TinyWorld, tmp_path: Path, url: str, **generation: object) -> Path:
    paths = {
        "demo-output/assets/student-init": tiny.student,
        "demo-output/assets/data/student-train.jsonl": prompt_file(tmp_path / "prompts.jsonl", PROMPTS),
        "demo-output/runs/generate-from-endpoint": tmp_path / "out",
    }
    endpoint = {"baseUrl": url, "model": "scripted", "concurrency": 1, "maxRetries": 0}
    manifest = example_manifest("generate-from-endpoint", paths, endpoint=endpoint, **generation)
    return write_manifest(tmp_path / "job.yaml", manifest)


def _generation_gauges(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return {
        family.name: family.samples[0].value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("kubedistill_generation_")
    }


def test_a_generation_keeping_too_few_answers_fails_naming_the_skipped_file_and_the_commonest_reason(
    tiny: TinyWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()
    seen: list[dict[str, float]] = []

    def scrape(prompt: str) -> None:
        if prompt == PROMPTS[-1]:
            seen.append(_generation_gauges(port))

    caplog.set_level(logging.INFO, logger="kubedistill.runtime.generation.phase")
    with scripted_server(SCRIPT, on_request=scrape) as server:
        file = _job(tiny, tmp_path, server.url)
        outcome = invoke(["run", str(file), "--metrics-port", str(port)])
    skipped = tmp_path / "out" / "generated" / "demo-generate-from-endpoint.skipped.jsonl"
    assert_rejected(
        outcome,
        file,
        "spec.generation.minKeptFraction: 2 of 10 (prompt, sample) pairs became training records (20%), "
        f"fewer than 0.9; most skipped: 7 length (e.g. finish_reason length); see {skipped}",
    )
    # While the last request was answered, /metrics showed the nine pairs before it.
    assert seen == [
        {
            "kubedistill_generation_pairs": 10,
            "kubedistill_generation_kept_pairs": 2,
            "kubedistill_generation_skipped_pairs": 7,
            "kubedistill_generation_prompt_tokens": 9 * 7,
            "kubedistill_generation_completion_tokens": 9 * 5,
        }
    ]
    progress = [record.getMessage() for record in caplog.records if "pairs done" in record.getMessage()]
    assert len(progress) == 10, "a line per tenth of the pairs"
    assert progress[-1] == (
        "generation: 10 of 10 pairs done, 2 kept, skipped: 7 length, 1 empty; 70 prompt and 50 completion "
        "tokens"
    )


def test_pairs_still_failing_stop_the_run_saying_a_rerun_asks_them_again(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    down = {prompt: [(503, "overloaded", {})] for prompt in PROMPTS[5:]}
    with scripted_server(down) as server:
        file = _job(tiny, tmp_path, server.url, minKeptFraction=0.5)
        outcome = invoke(["run", str(file), "--metrics-port", str(_free_port())])
    generated = tmp_path / "out" / "generated" / "demo-generate-from-endpoint.jsonl"
    assert_rejected(
        outcome,
        file,
        "spec.generation.endpoint: 5 of 10 requests still failed after their retries (e.g. HTTP 503: "
        f"overloaded (after 0 retries)); the 5 answers so far are kept in {generated}, and a rerun asks only "
        "the failed pairs again",
    )


def test_requests_waiting_to_be_retried_are_reported_while_no_answer_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(phase, "PROGRESS_EVERY_SECONDS", 0.05)
    caplog.set_level(logging.INFO, logger="kubedistill.runtime.generation.phase")
    down = [(503, "overloaded", {"Retry-After": "0.5"}), completion("back")]
    prompts = prompt_file(tmp_path / "prompts.jsonl", ["cow"])
    with scripted_server({"cow": down}) as server:
        job = endpoint_job(prompts, server.url, endpoint={"maxRetries": 1})
        result = phase.run_generation(job, tmp_path / "out", {"TEST_API_KEY": "sk-test"})
    assert result.report["generated"] == 1
    waiting = [record.getMessage() for record in caplog.records if "waiting to retry" in record.getMessage()]
    assert waiting, "no line while the request waited half a second to be retried"
    assert (
        waiting[0] == "generation: 0 of 1 pairs done, 0 kept; waiting to retry: 1 (e.g. HTTP 503: overloaded)"
    )
