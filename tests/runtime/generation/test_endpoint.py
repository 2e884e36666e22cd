"""Generating from an OpenAI-compatible endpoint that misbehaves as hosted APIs do: every (prompt, sample)
pair ends as a training record or as a recorded skip with its reason, never silently lost; the key goes only
into the Authorization header."""

import json
from pathlib import Path

import pytest

from kubedistill.runtime.generation.endpoint import EndpointRefused
from kubedistill.runtime.generation.phase import run_generation
from tests.runtime.generation.jobs import endpoint_job, prompt_file
from tests.runtime.generation.scripted_server import completion, scripted_server

KEY = "sk-test-not-a-real-key-7f3a"
ENV = {"TEST_API_KEY": KEY}
BACKOFF = 0.01
"""Seconds: the client's backoff base, small so that retries take milliseconds here."""
SCRIPT = {
    "flaky": [(429, {"error": "slow down"}, {"Retry-After": "0"}), (503, "overloaded", {}), completion("ok")],
    "broken": [(500, "internal error", {})],
    "empty": [completion("")],
    "long": [completion("and then and then", finish_reason="length")],
}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return prompt_file(tmp_path / "prompts.jsonl", ["fine", "flaky", "broken", "empty", "long"])


def test_each_pair_becomes_a_record_or_a_skip_with_its_reason(prompts: Path, tmp_path: Path) -> None:
    with scripted_server(SCRIPT) as server:
        job = endpoint_job(prompts, server.url, endpoint={"maxRetries": 2})
        result = run_generation(job, tmp_path / "out", ENV, backoff_seconds=BACKOFF)
    kept = {line["prompt"][-1]["content"]: line for line in _lines(result.path)}
    assert sorted(kept) == ["fine", "flaky"]
    assert kept["flaky"]["response"] == "ok"
    assert kept["fine"]["messages"][-1] == {"role": "assistant", "content": "an answer to fine"}
    assert kept["fine"]["messages"][:-1] == kept["fine"]["prompt"], "the old answer is replaced"
    assert server.asked["flaky"] == 3, "429 and 503 are retried"
    assert server.asked["broken"] == 3, "one request and maxRetries retries"
    skipped = {
        line["source"].rsplit(":", 1)[1]: line for line in _lines(result.path.with_suffix(".skipped.jsonl"))
    }
    assert {line: s["reason"] for line, s in skipped.items()} == {"3": "failed", "4": "empty", "5": "length"}
    assert skipped["3"]["detail"] == "HTTP 500: internal error (after 2 retries)"
    assert result.report["skipped"] == {"failed": 1, "empty": 1, "length": 1}
    assert "skipped: 1 empty, 1 failed, 1 length" in result.summary()


def test_every_line_records_the_teacher_and_the_sampling_settings(prompts: Path, tmp_path: Path) -> None:
    with scripted_server({}) as server:
        job = endpoint_job(prompts, server.url, samplesPerPrompt=2, temperature=0.5, topP=0.9)
        result = run_generation(job, tmp_path / "out", ENV, backoff_seconds=BACKOFF)
    lines = _lines(result.path)
    assert [(line["prompt"][-1]["content"], line["sample"]) for line in lines][:4] == [
        ("fine", 0),
        ("fine", 1),
        ("flaky", 0),
        ("flaky", 1),
    ], "prompt order, then sample"
    assert {json.dumps([line["teacher"], line["endpoint"], line["sampling"]]) for line in lines} == {
        json.dumps(
            ["scripted", server.url, {"temperature": 0.5, "topP": 0.9, "maxNewTokens": 16, "seed": 11}]
        )
    }
    assert {line["finishReason"] for line in lines} == {"stop"}
    sent = {(body["messages"][-1]["content"], body["seed"]) for body in server.bodies}
    assert ("fine", 11) in sent and ("fine", 12) in sent, "sample i is drawn with seed + i"
    assert {body["max_tokens"] for body in server.bodies} == {16}


def test_cut_off_responses_are_kept_when_asked(prompts: Path, tmp_path: Path) -> None:
    with scripted_server(SCRIPT) as server:
        job = endpoint_job(prompts, server.url, keepTruncated=True, endpoint={"maxRetries": 0})
        result = run_generation(job, tmp_path / "out", ENV, backoff_seconds=BACKOFF)
    kept = {line["prompt"][-1]["content"]: line["finishReason"] for line in _lines(result.path)}
    assert kept["long"] == "length"
    assert result.report["skipped"] == {"failed": 2, "empty": 1}


def test_the_key_is_sent_as_a_bearer_token_and_written_nowhere(prompts: Path, tmp_path: Path) -> None:
    with scripted_server(SCRIPT) as server:
        run_generation(endpoint_job(prompts, server.url), tmp_path / "out", ENV, backoff_seconds=BACKOFF)
    assert server.authorizations == {f"Bearer {KEY}"}
    written = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert written
    assert not [path for path in written if KEY in path.read_text()]


def test_a_refused_key_stops_generation_naming_the_field(prompts: Path, tmp_path: Path) -> None:
    script = {prompt: [(401, {"error": "invalid api key"}, {})] for prompt in ("fine", "flaky", "broken")}
    with scripted_server(script) as server, pytest.raises(EndpointRefused) as refused:
        run_generation(endpoint_job(prompts, server.url), tmp_path / "out", ENV, backoff_seconds=BACKOFF)
    assert str(refused.value).startswith("spec.generation.endpoint.apiKey: ")
    assert "HTTP 401" in str(refused.value) and KEY not in str(refused.value)


def test_a_records_tools_go_with_its_prompt_and_into_the_generated_record(tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    records = [{"messages": [{"role": "user", "content": "rain?"}], "tools": tools}]
    train = tmp_path / "tools.jsonl"
    train.write_text("".join(json.dumps(record) + "\n" for record in records))
    with scripted_server({}) as server:
        result = run_generation(
            endpoint_job(train, server.url), tmp_path / "out", ENV, backoff_seconds=BACKOFF
        )
    assert [body["tools"] for body in server.bodies] == [tools]
    assert _lines(result.path)[0]["tools"] == tools
