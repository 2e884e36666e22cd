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
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch

from kubedistill.api import parse_job
from kubedistill.api.spec import DataSource, DataSpec, Mode
from kubedistill.runtime.cluster.actors import free_port
from kubedistill.runtime.data.load import load_samples
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

if TYPE_CHECKING:
    from transformers import PreTrainedModel

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
    answers: tuple[str, ...] = (),
    **generation: Any,
) -> GenerationResult:
    """Answers to QUESTIONS; with `answers`, the records carry those (for scoreAnswers)."""
    url, model = server
    records = [
        {
            "messages": [
                {"role": "user", "content": question},
                *([{"role": "assistant", "content": answers[i]}] if answers else []),
            ],
            **({"tools": [WEATHER_TOOL]} if tools else {}),
        }
        for i, question in enumerate(QUESTIONS)
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
Scored = tuple[torch.Tensor, slice | torch.Tensor, torch.Tensor, torch.Tensor]
"""A sequence, the rows of its logits that predict the scored tokens, and their stored top-k (-1: none)."""


def sparse_kd_steps(student: "PreTrainedModel", batch: list[Scored], steps: int = 8) -> list[float]:
    """The loss of each of `steps` Adam steps of sparse KD on the stored targets alone, from the student with
    a noisy head (so that it has something to learn)."""
    with torch.no_grad():
        head = student.get_output_embeddings()
        assert isinstance(head, torch.nn.Linear)
        head.weight.add_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)) * 3.0)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.003)
    losses = []
    for _ in range(steps):
        loss = torch.stack(
            [
                sparse_kd_loss(student(tokens).logits[0, where], ids, logprobs, ids >= 0).mean()
                for tokens, where, ids, logprobs in batch
            ]
        ).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses)
    return losses


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
    losses = sparse_kd_steps(load_causal_lm(str(model)), batch)
    assert losses[-1] < losses[0] / 10, losses


ANSWERS = ("the weather in paris today", "hello there", "what is the weather")
"""Answers the served model would never write (it writes its chain): scored where it is unsure."""


def test_the_datas_own_answers_are_scored_by_the_served_model_and_sparse_kd_trains_on_them(
    sglang_server: tuple[str, Path], tiny: TinyWorld, tmp_path: Path
) -> None:
    """scoreAnswers: SGLang's /v1/completions scores each record's answer, sent as the student's token ids
    (the served model's own tokenizer); the stored top-k at every target the data pipeline trains on is the
    model's log-softmax there (transformers on the same weights, fp32), and sparse KD on the samples the
    pipeline builds from the file brings a perturbed copy towards it."""
    _, model = sglang_server
    result = generate(
        sglang_server, tiny, tmp_path, tools=False, student=model, answers=ANSWERS, topLogprobs=TOP,
        scoreAnswers=True,
    )  # fmt: skip
    generated = lines(result)
    assert result.report["skipped"] == {} and len(generated) == len(QUESTIONS), "every answer maps"
    assert [line["messages"][-1]["content"] for line in generated] == list(ANSWERS), "the data's answers"
    tokenizer = load_tokenizer(str(model))
    source = DataSource(path=str(result.path))
    samples = load_samples(
        source,
        DataSpec(train=source, max_length=512, prompt_max_length=256),
        tokenizer,
        mode=Mode.SFT,
        processes=1,
        sparse_targets=True,
    ).samples
    assert len(samples) == len(ANSWERS), "the pipeline takes every record, its targets the scored tokens"
    teacher = load_causal_lm(str(model)).eval()
    batch, shares = [], []
    for sample, line in zip(samples, generated, strict=True):
        assert sample.teacher_top_ids is not None and sample.teacher_top_logprobs is not None
        tokens = torch.tensor(sample.input_ids[None].astype(np.int64))
        targets = torch.from_numpy(sample.target_mask[1:])
        with torch.no_grad():
            expected = torch.log_softmax(teacher(tokens).logits[0, :-1][targets].double(), -1)
        top_ids = torch.from_numpy(sample.teacher_top_ids.astype(np.int64))
        top_logprobs = torch.from_numpy(sample.teacher_top_logprobs)
        named = top_ids >= 0
        assert named.any(1).all(), "every target scored, the end of turn included"
        assert top_ids.shape[1] <= TOP
        # Ties (every token off the model's chain scores the same) come in any order, and SGLang cannot name
        # a byte fragment of this tokenizer (left out): each stored token's log-probability is the model's
        # for that token, and among its k largest.
        torch.testing.assert_close(
            top_logprobs[named], expected.gather(1, top_ids.clamp(min=0)).float()[named], atol=1e-3, rtol=0
        )
        kth = expected.topk(TOP, -1).values[:, -1:].float().expand_as(top_logprobs)
        assert (top_logprobs[named] >= kth[named] - 1e-3).all()
        shares.append(named.sum().item() / (named.shape[0] * TOP))
        scored = torch.tensor(line["teacherLogprobs"]["ids"])
        assert (scored == tokens[0, 1:][targets]).all()
        chosen = expected.gather(1, scored[:, None])[:, 0].float()
        torch.testing.assert_close(
            torch.tensor(line["teacherLogprobs"]["logprobs"]), chosen, atol=1e-3, rtol=0
        )
        assert chosen.min() < -5.0, "the given answer, not the model's: it is unsure of some tokens"
        batch.append((tokens, targets.nonzero()[:, 0], top_ids, top_logprobs))
    assert sum(shares) / len(shares) > 0.9, f"SGLang names all but a few fragments: {shares}"
    losses = sparse_kd_steps(load_causal_lm(str(model)), batch)
    assert losses[-1] < losses[0] / 10, losses
