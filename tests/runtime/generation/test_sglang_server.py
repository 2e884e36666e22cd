"""The hosted-teacher path against SGLang's own OpenAI-compatible server (`sglang.launch_server`, the pinned
0.5.23 on CPU) with its Qwen3 reasoning parser and Qwen2.5 tool-call parser on: the reasoning, tool calls,
finish reasons and token usage the client keeps come from a real server, not a script.

The served model (`reasoning_teacher`) answers every chat with its thinking and one call of the weather
tool; one server for the module.
"""

import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from kubedistill.api import parse_job
from kubedistill.runtime.cluster.actors import free_port
from kubedistill.runtime.demo.data import write_jsonl
from kubedistill.runtime.generation.phase import GenerationResult, run_generation
from kubedistill.runtime.losses.sparse import sparse_kd_loss
from kubedistill.runtime.models.loading import load_causal_lm, load_tokenizer
from tests.runtime.conftest import TinyWorld
from tests.runtime.generation.examples import example_manifest
from tests.runtime.generation.reasoning_teacher import (
    ANSWER_TOKENS,
    ARGUMENTS,
    PIECES,
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
    server: tuple[str, Path],
    tiny: TinyWorld,
    tmp_path: Path,
    *,
    tools: bool,
    student: Path | None = None,
    **generation: Any,
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
    if "temperature" not in generation:
        del manifest["spec"]["generation"]["temperature"]  # sent only when the manifest sets it
    if student is not None:
        manifest["spec"]["student"]["model"] = str(student)
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


TOP = 5


def test_top_logprobs_are_the_served_models_own_and_a_sparse_kd_step_trains_on_them(
    sglang_server: tuple[str, Path], tiny: TinyWorld, tmp_path: Path
) -> None:
    """The student shares the served model's vocabulary (its own directory): every answer maps, its stored
    top-k is the model's log-softmax at each generated token (checked against transformers on the same
    weights), and a few steps of sparse KD on the stored targets bring a perturbed copy towards it."""
    _, model = sglang_server
    result = generate(
        sglang_server, tiny, tmp_path, tools=False, student=model, topLogprobs=TOP, temperature=0.0
    )
    generated = lines(result)
    assert result.report["skipped"] == {} and len(generated) == len(QUESTIONS), "every answer maps"
    tokenizer = load_tokenizer(str(model))
    chain = [*tokenizer.convert_tokens_to_ids(list(PIECES)), tokenizer.eos_token_id]
    teacher = load_causal_lm(str(model)).eval()
    student = load_causal_lm(str(model))
    with torch.no_grad():
        head = student.get_output_embeddings()
        assert isinstance(head, torch.nn.Linear)
        head.weight.add_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)) * 3.0)
    batch = []
    for line in generated:
        targets = line["teacherLogprobs"]
        assert targets["ids"] == chain, "the sampled tokens, in the student's ids: the model's whole answer"
        prompt = tokenizer.apply_chat_template(line["prompt"], add_generation_prompt=True, return_dict=True)[
            "input_ids"
        ]
        tokens = torch.tensor([[*prompt, *targets["ids"]]])
        positions = slice(len(prompt) - 1, tokens.shape[1] - 1)
        with torch.no_grad():
            expected = torch.log_softmax(teacher(tokens).logits[0, positions].double(), -1).topk(TOP, -1)
        top_ids, top_logprobs = torch.tensor(targets["topIds"]), torch.tensor(targets["topLogprobs"])
        assert top_ids.shape == (len(chain), TOP)
        # The top-1 ids must match; the rest tie (every other token scores the same) in any order.
        assert (top_ids[:, 0] == expected.indices[:, 0]).all(), "greedy: each sampled token is the top-1"
        torch.testing.assert_close(top_logprobs, expected.values.float(), atol=1e-3, rtol=0)
        torch.testing.assert_close(torch.tensor(targets["logprobs"]), top_logprobs[:, 0])
        batch.append((tokens, positions, top_ids, top_logprobs))
    prompted = sum(tokens.shape[1] - len(chain) for tokens, *_ in batch)
    assert prompted == result.report["usage"]["promptTokens"], "the prompts as the server read them"
    # The served teacher is sure of each token (log p = 0, so the tail is TRL's clamp); a student with a
    # noisy head is not, and sparse KD on the stored targets alone brings it back.
    optimizer = torch.optim.Adam(student.parameters(), lr=0.003)
    losses = []
    for _ in range(8):
        loss = torch.stack(
            [
                sparse_kd_loss(
                    student(tokens).logits[0, where], ids, logprobs, torch.ones_like(ids, dtype=torch.bool)
                )
                for tokens, where, ids, logprobs in batch
            ]
        ).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < losses[0] / 10, losses
