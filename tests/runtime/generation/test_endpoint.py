"""Generating from an OpenAI-compatible endpoint that misbehaves as hosted APIs do: every (prompt, sample)
pair ends as a training record or as a recorded skip with its reason, never silently lost; the key goes only
into the Authorization header; every body sent is one the OpenAI API takes (the scripted server refuses
any other, as the API does)."""

import json
from pathlib import Path
from typing import Any

import pytest

from kubedistill.api.generation import EndpointSpec, answer_timeout_seconds
from kubedistill.runtime.data.messages import chat_messages
from kubedistill.runtime.generation.endpoint import EndpointRefused
from kubedistill.runtime.generation.phase import run_generation
from kubedistill.runtime.generation.store import GenerationRefused
from tests.runtime.conftest import TinyWorld
from tests.runtime.generation.jobs import endpoint_job, prompt_file
from tests.runtime.generation.openai_contract import request_problem
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
    assert {body["max_completion_tokens"] for body in server.bodies} == {16}
    assert {(body["temperature"], body["top_p"]) for body in server.bodies} == {(0.5, 0.9)}


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


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_the_body_asks_max_completion_tokens_and_sends_sampling_only_when_the_manifest_sets_it(
    prompts: Path, tmp_path: Path
) -> None:
    # OpenAI's reasoning models refuse max_tokens and any temperature but their default.
    with scripted_server({}) as server:
        run_generation(endpoint_job(prompts, server.url), tmp_path / "unset", ENV, backoff_seconds=BACKOFF)
        unset = list(server.bodies)
        server.bodies.clear()
        run_generation(
            endpoint_job(prompts, server.url, temperature=0.0),
            tmp_path / "greedy",
            ENV,
            backoff_seconds=BACKOFF,
        )
    assert {tuple(sorted(body)) for body in unset} == {
        ("max_completion_tokens", "messages", "model", "seed", "stream")
    }
    assert {(body["temperature"], "top_p" in body) for body in server.bodies} == {(0.0, False)}
    assert server.invalid == []


TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
HISTORY = [
    {"role": "user", "content": "rain in Oslo, and the time?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}},
            {"id": "call_t", "type": "function", "function": {"name": "time", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "name": "time", "content": "noon"},
    {"role": "tool", "name": "weather", "content": "rain"},
    {"role": "user", "content": "so, an umbrella?"},
]


def test_tool_call_history_goes_out_in_the_wire_format_the_api_takes(tmp_path: Path) -> None:
    train = _write(tmp_path / "tools.jsonl", [{"messages": HISTORY, "tools": TOOLS}])
    with scripted_server({}) as server:
        result = run_generation(
            endpoint_job(train, server.url), tmp_path / "out", ENV, backoff_seconds=BACKOFF
        )
    assert server.invalid == []
    (body,) = server.bodies
    calls = body["messages"][1]["tool_calls"]
    assert [call["function"]["arguments"] for call in calls] == ['{"city": "Oslo"}', "{}"]
    assert calls[1]["id"] == "call_t" and calls[0]["id"]
    assert [message.get("tool_call_id") for message in body["messages"][2:4]] == ["call_t", calls[0]["id"]]
    assert body["tools"] == TOOLS
    assert result.report["generated"] == 1


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"max_tokenz": 16}, "max_tokenz"),
        ({"messages": [{"role": "tool", "content": "rain"}]}, "tool_call_id"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"id": "a", "type": "function", "function": {"name": "f", "arguments": {}}}
                        ],
                    }
                ]
            },
            "arguments",
        ),
        ({"messages": [{"role": "tool", "content": "rain", "tool_call_id": "a", "name": "f"}]}, "name"),
    ],
    ids=["unknown-field", "tool-result-without-id", "arguments-object", "tool-result-name"],
)
def test_the_contract_check_refuses_what_the_api_refuses(change: dict, named: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 4}
    assert request_problem(body) is None
    problem = request_problem(body | change)
    assert problem is not None and named in problem


CALL = {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}


def test_a_tool_call_answer_is_kept_with_its_calls_as_training_data(tmp_path: Path) -> None:
    train = _write(
        tmp_path / "tools.jsonl", [{"messages": [{"role": "user", "content": "rain?"}], "tools": TOOLS}]
    )
    script = {"rain?": [completion(None, finish_reason="tool_calls", tool_calls=[CALL])]}
    with scripted_server(script) as server:
        result = run_generation(
            endpoint_job(train, server.url), tmp_path / "out", ENV, backoff_seconds=BACKOFF
        )
    (line,) = _lines(result.path)
    assert line["messages"][-1] == {"role": "assistant", "content": None, "tool_calls": [CALL]}
    assert line["finishReason"] == "tool_calls"
    trained = chat_messages(line["messages"], "messages")
    assert trained[-1]["tool_calls"] == [
        {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    ], "the data pipeline reads the call the student learns"


def test_a_request_refused_before_any_answer_stops_the_phase_with_the_servers_message(
    prompts: Path, tmp_path: Path
) -> None:
    refusal = (400, {"error": {"message": '"auto" tool choice requires --enable-auto-tool-choice'}}, {})
    script = {prompt: [refusal] for prompt in ("fine", "flaky", "broken", "empty", "long")}
    with scripted_server(script) as server, pytest.raises(EndpointRefused) as refused:
        run_generation(endpoint_job(prompts, server.url), tmp_path / "out", ENV, backoff_seconds=BACKOFF)
    assert str(refused.value).startswith(f"spec.generation.endpoint: {server.url}/chat/completions refused")
    assert "--enable-auto-tool-choice" in str(refused.value)
    assert not (tmp_path / "out" / "generated" / "from-endpoint.report.json").exists()


def test_a_request_refused_after_answers_is_skipped_alone(prompts: Path, tmp_path: Path) -> None:
    script = {"long": [(400, {"error": {"message": "prompt too long"}}, {})]}
    with scripted_server(script, delay=0.0) as server:
        job = endpoint_job(prompts, server.url, endpoint={"concurrency": 1})
        result = run_generation(job, tmp_path / "out", ENV, backoff_seconds=BACKOFF)
    assert result.report["skipped"] == {"rejected": 1}
    assert result.report["finished"] is True
    assert server.asked["long"] == 1, "a 4xx is not retried"


def test_only_answers_the_model_ended_are_kept_and_the_rest_are_counted_by_reason(tmp_path: Path) -> None:
    names = ["ended", "filtered", "aborted", "unknown"]
    train = prompt_file(tmp_path / "prompts.jsonl", names)
    script = {
        "filtered": [completion("[redacted]", finish_reason="content_filter")],
        "aborted": [completion("half an ans", finish_reason="abort")],
        "unknown": [completion("who knows", finish_reason="eos_of_some_kind")],
    }
    with scripted_server(script) as server:
        result = run_generation(
            endpoint_job(train, server.url), tmp_path / "out", ENV, backoff_seconds=BACKOFF
        )
    assert [line["prompt"][-1]["content"] for line in _lines(result.path)] == ["ended"]
    assert result.report["skipped"] == {"content_filter": 1, "abort": 1, "eos_of_some_kind": 1}


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"], ids=["sglang", "vllm"])
@pytest.mark.parametrize("keep", [True, False], ids=["kept", "dropped"])
def test_a_reasoning_teachers_thinking_is_kept_as_reasoning_content_unless_dropped(
    tmp_path: Path, field: str, keep: bool
) -> None:
    train = prompt_file(tmp_path / "prompts.jsonl", ["think"])
    script = {"think": [completion("42", **{field: "six times seven"})]}
    with scripted_server(script) as server:
        job = endpoint_job(train, server.url, keepReasoning=keep)
        result = run_generation(job, tmp_path / "out", ENV, backoff_seconds=BACKOFF)
    (line,) = _lines(result.path)
    expected = {"role": "assistant", "content": "42"} | (
        {"reasoning_content": "six times seven"} if keep else {}
    )
    assert line["messages"][-1] == expected
    assert line["reasoning"] == "six times seven", "the teacher's output is on the line either way"


def test_token_usage_of_every_answer_is_summed_into_the_report(prompts: Path, tmp_path: Path) -> None:
    script = {
        "empty": [completion("", usage=(10, 1))],
        "long": [completion("and then", finish_reason="length", usage=(11, 16))],
    }
    with scripted_server(script) as server:
        result = run_generation(
            endpoint_job(prompts, server.url), tmp_path / "out", ENV, backoff_seconds=BACKOFF
        )
    # Three answers of (7, 5), and the skipped ones: they are billed too.
    assert result.report["usage"] == {"promptTokens": 3 * 7 + 10 + 11, "completionTokens": 3 * 5 + 1 + 16}
    assert "tokens: 42 prompt, 32 completion" in result.summary()


def test_the_pool_holds_every_request_in_flight_and_its_wait_is_not_the_answers_time(tmp_path: Path) -> None:
    # aiohttp's default pool holds 100 connections: with concurrency 120, 20 requests would wait for one,
    # and that wait would count against their timeout.
    train = prompt_file(tmp_path / "prompts.jsonl", [f"question {i}" for i in range(120)])
    with scripted_server({}, delay=0.4) as server:
        job = endpoint_job(
            train, server.url, endpoint={"concurrency": 120, "timeoutSeconds": 0.7, "maxRetries": 0}
        )
        result = run_generation(job, tmp_path / "out", ENV, backoff_seconds=BACKOFF)
    assert server.most_in_flight == 120
    assert result.report["generated"] == 120 and result.report["skipped"] == {}


@pytest.mark.parametrize(
    ("timeout", "max_new_tokens", "expected"),
    [(None, 1024, 162.4), (None, 32768, 3336.8), (300.0, 32768, 300.0)],
)
def test_the_answer_timeout_grows_with_max_new_tokens_unless_set(
    timeout: float | None, max_new_tokens: int, expected: float
) -> None:
    endpoint = EndpointSpec(base_url="https://api.example.com/v1", model="m", timeout_seconds=timeout)
    assert answer_timeout_seconds(endpoint, max_new_tokens) == pytest.approx(expected)


def test_a_tool_call_answered_without_an_id_gets_one_and_object_arguments_become_text(tmp_path: Path) -> None:
    train = _write(
        tmp_path / "tools.jsonl", [{"messages": [{"role": "user", "content": "rain?"}], "tools": TOOLS}]
    )
    loose = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    script = {"rain?": [completion("", finish_reason="tool_calls", tool_calls=[loose])]}
    with scripted_server(script) as server:
        result = run_generation(
            endpoint_job(train, server.url), tmp_path / "out", ENV, backoff_seconds=BACKOFF
        )
    (line,) = _lines(result.path)
    assert line["messages"][-1]["tool_calls"] == [
        {"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    ]


def served_logprobs(tokenizer: Any, text: str) -> dict[str, Any]:
    """`choices[0].logprobs` for `text` written with the tokenizer's own tokens, each its own top-1 and one
    alternative (id 30), as OpenAI-compatible servers write it (text and UTF-8 bytes per token)."""

    def entry(index: int, logprob: float) -> dict[str, Any]:
        piece = tokenizer.decode([index])
        return {"token": piece, "bytes": list(piece.encode("utf-8")), "logprob": logprob}

    ids = tokenizer.encode(text, add_special_tokens=False)
    return {"content": [{**entry(i, -0.25), "top_logprobs": [entry(i, -0.25), entry(30, -2.5)]} for i in ids]}


def with_logprobs(answer: Any, logprobs: dict[str, Any]) -> Any:
    status, body, headers = answer
    return status, {**body, "choices": [{**body["choices"][0], "logprobs": logprobs}]}, headers


def test_top_logprobs_are_asked_and_kept_in_the_students_ids_or_the_answer_is_skipped(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    from kubedistill.runtime.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny.student))
    foreign = served_logprobs(tokenizer, "fine")
    foreign["content"][0]["top_logprobs"][1] = {"token": "zebra", "bytes": list(b"zebra"), "logprob": -3.0}
    script = {
        "fine": [with_logprobs(completion("fine today"), served_logprobs(tokenizer, "fine today"))],
        "foreign": [with_logprobs(completion("fine"), foreign)],
        "without": [completion("fine")],
    }
    prompts = prompt_file(tmp_path / "prompts.jsonl", list(script))
    with scripted_server(script) as server:
        job = endpoint_job(prompts, server.url, student=str(tiny.student), topLogprobs=2, minKeptFraction=0.0)
        result = run_generation(job, tmp_path / "out", ENV, backoff_seconds=BACKOFF)
    assert server.invalid == [], "logprobs and top_logprobs are the API's own fields"
    assert {(body["logprobs"], body["top_logprobs"]) for body in server.bodies} == {(True, 2)}
    (line,) = _lines(result.path)
    ids = tokenizer.encode("fine today", add_special_tokens=False)
    assert line["teacherLogprobs"] == {
        "ids": ids,
        "logprobs": [-0.25] * len(ids),
        "topIds": [[i, 30] for i in ids],
        "topLogprobs": [[-0.25, -2.5]] * len(ids),
    }
    assert line["sampling"]["topLogprobs"] == 2, "a rerun asking another k is refused, not mixed"
    assert result.report["skipped"] == {"unmapped": 1, "noLogprobs": 1}
    assert "b'zebra' is not in the student's vocabulary" in result.report["skippedExamples"]["unmapped"]


def test_a_generation_without_top_logprobs_is_reused_as_it_was_and_refused_when_they_are_asked(
    prompts: Path, tmp_path: Path
) -> None:
    """Files written before topLogprobs existed keep their report's settings; asking for log-probabilities
    later would mix lines with and without them, so the file is refused naming the setting."""
    with scripted_server({}) as server:
        first = run_generation(endpoint_job(prompts, server.url), tmp_path, ENV, backoff_seconds=BACKOFF)
        assert "top_logprobs" not in first.report["settings"], "the report as it was before the setting"
        again = run_generation(endpoint_job(prompts, server.url), tmp_path, ENV, backoff_seconds=BACKOFF)
        assert again.reused
        with pytest.raises(GenerationRefused, match='"topLogprobs": 2'):
            run_generation(
                endpoint_job(prompts, server.url, topLogprobs=2), tmp_path, ENV, backoff_seconds=BACKOFF
            )
