"""The hosted-teacher path against SGLang's own OpenAI-compatible server (`sglang.launch_server`, the pinned
0.5.23 on CPU) with its Qwen3 reasoning parser and Qwen2.5 tool-call parser on: the reasoning, tool calls,
finish reasons and token usage the client keeps come from a real server, not a script.

The served model (`reasoning_teacher`) answers every chat with its thinking and one call of the weather
tool; one server for the module.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubedistill.api import parse_job
from kubedistill.runtime.cluster.actors import free_port
from kubedistill.runtime.demo.data import write_jsonl
from kubedistill.runtime.generation.phase import GenerationResult, run_generation
from tests.runtime.conftest import TinyWorld
from tests.runtime.generation.examples import example_manifest
from tests.runtime.generation.reasoning_teacher import (
    ANSWER_TOKENS,
    ARGUMENTS,
    REASONING,
    TOOL,
    WEATHER_TOOL,
    save_reasoning_teacher,
)

pytestmark = pytest.mark.sglang

STARTUP_SECONDS = 240
QUESTIONS = ("What is the weather in Paris?", "Is it raining in Paris?", "Paris: sun or clouds?")


@pytest.fixture(scope="module")
def sglang_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The base URL (ending in /v1) of SGLang's server, and the model directory it serves."""
    root = tmp_path_factory.mktemp("sglang-server")
    model = save_reasoning_teacher(root / "teacher")
    port = free_port()
    log = root / "server.log"
    command = [
        sys.executable, "-m", "sglang.launch_server",
        "--model-path", str(model), "--host", "127.0.0.1", "--port", str(port),
        "--device", "cpu", "--dtype", "float32", "--mem-fraction-static", "0.3", "--max-total-tokens", "4096",
        "--sleep-on-idle", "--skip-server-warmup",
        "--reasoning-parser", "qwen3", "--tool-call-parser", "qwen25",
    ]  # fmt: skip
    with log.open("wb") as output:
        server = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SGLANG_USE_CPU_ENGINE": "1", "HF_HUB_OFFLINE": "1"},
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while True:
                assert server.poll() is None, log.read_text()[-4000:]
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, log.read_text()[-4000:]
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/v1", model
        finally:
            # The server's scheduler and detokenizer are its children: end the whole session.
            os.killpg(server.pid, 15)
            server.wait(timeout=60)


def generate(
    server: tuple[str, Path], tiny: TinyWorld, tmp_path: Path, *, tools: bool, **generation: Any
) -> GenerationResult:
    url, model = server
    records = [
        {"messages": [{"role": "user", "content": question}], **({"tools": [WEATHER_TOOL]} if tools else {})}
        for question in QUESTIONS
    ]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", records)
    manifest = example_manifest(
        "generate-from-endpoint",
        {
            "demo-output/assets/student-init": tiny.student,
            "demo-output/assets/data/student-train.jsonl": prompts,
            "demo-output/runs/generate-from-endpoint": tmp_path / "out",
        },
        endpoint={"baseUrl": url, "model": str(model), "maxRetries": 0},
        **generation,
    )
    del manifest["spec"]["generation"]["temperature"]  # sent only when the manifest sets it
    return run_generation(parse_job(manifest), tmp_path / "out", {})


def lines(result: GenerationResult) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.path.read_text(encoding="utf-8").splitlines()]


def test_a_reasoning_teachers_tool_call_is_kept_as_the_call_with_its_thinking(
    sglang_server: tuple[str, Path], tiny: TinyWorld, tmp_path: Path
) -> None:
    result = generate(sglang_server, tiny, tmp_path, tools=True)
    generated = lines(result)
    assert len(generated) == len(QUESTIONS)
    for line in generated:
        assert line["finishReason"] == "tool_calls"
        answer = line["messages"][-1]
        (call,) = answer["tool_calls"]
        assert call["type"] == "function" and call["id"], "SGLang names each call"
        assert call["function"]["name"] == TOOL
        assert json.loads(call["function"]["arguments"]) == ARGUMENTS, "arguments stay JSON text"
        assert answer["content"] is None, "a message that only calls a tool has no content"
        assert answer["reasoning_content"] == REASONING, "SGLang's reasoning_content, apart from the answer"
        assert line["tools"] == [WEATHER_TOOL], "the record keeps the tools the call was made with"
    report = result.report
    assert report["skipped"] == {}
    assert report["usage"]["completionTokens"] == len(QUESTIONS) * ANSWER_TOKENS, "as the server billed"
    assert report["usage"]["promptTokens"] > len(QUESTIONS) * 20, "Qwen3's template lists the tool"


def test_without_tools_the_call_is_text_and_the_thinking_can_be_dropped(
    sglang_server: tuple[str, Path], tiny: TinyWorld, tmp_path: Path
) -> None:
    result = generate(sglang_server, tiny, tmp_path, tools=False, keepReasoning=False)
    for line in lines(result):
        assert line["finishReason"] == "stop"
        answer = line["messages"][-1]
        assert "tool_calls" not in answer and answer["content"].startswith("<tool_call>")
        assert "reasoning_content" not in answer, "keepReasoning: false"


def test_answers_cut_off_by_the_server_are_skipped_as_length(
    sglang_server: tuple[str, Path], tiny: TinyWorld, tmp_path: Path
) -> None:
    result = generate(sglang_server, tiny, tmp_path, tools=True, maxNewTokens=3)
    assert lines(result) == []
    assert result.report["skipped"] == {"length": len(QUESTIONS)}
    skipped = result.path.with_suffix(".skipped.jsonl")
    reasons = [json.loads(line)["reason"] for line in skipped.read_text(encoding="utf-8").splitlines()]
    assert reasons == ["length"] * len(QUESTIONS)
    assert result.report["usage"]["completionTokens"] == len(QUESTIONS) * 3, "cut-off answers are billed too"
