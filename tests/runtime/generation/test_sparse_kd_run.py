"""`kubedistill run` of a sparse KD job end to end: the generation phase asks an OpenAI-compatible endpoint
for its top-k log-probabilities (the scripted server on loopback, answering in OpenAI's `logprobs` format:
`transformers serve` ignores them), keeps them with each record, and training (mode sft, algorithm
sparseKd, no teacher actors) learns the stored distribution on two student ranks."""

import json
from pathlib import Path

import pytest
import torch

from kubedistill.runtime.losses.sparse import sparse_kd_loss
from kubedistill.runtime.models.loading import load_tokenizer
from tests.runtime.conftest import TinyWorld
from tests.runtime.generation.examples import distinct_prompts, example_manifest, write_manifest
from tests.runtime.generation.scripted_server import completion, scripted_server
from tests.runtime.generation.test_endpoint import with_logprobs
from tests.test_bad_inputs import invoke

ALTERNATIVE = 30
"""The second of the teacher's top-2 at every token: the teacher splits its mass evenly between it and the
sampled token, which cross-entropy alone would never teach."""
HALF = -0.6931471805599453


def even_logprobs(tokenizer, text: str) -> dict:
    """`choices[0].logprobs` for `text` in the tokenizer's own tokens (UTF-8 bytes per token, as
    OpenAI-compatible servers write it), each token and ALTERNATIVE at log(1/2)."""

    def entry(index: int) -> dict:
        piece = tokenizer.decode([index])
        return {"token": piece, "bytes": list(piece.encode("utf-8")), "logprob": HALF}

    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ALTERNATIVE not in ids
    return {"content": [{**entry(i), "top_logprobs": [entry(i), entry(ALTERNATIVE)]} for i in ids]}


def _stored_divergence(model_path: Path, lines: list[dict], tokenizer) -> tuple[float, float]:
    """A model's mean sparse KD to the records' stored top-2 over their answer tokens, and its mean
    probability of ALTERNATIVE there."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    divergences, alternative = [], []
    for line in lines:
        targets = line["teacherLogprobs"]
        prompt = tokenizer.apply_chat_template(line["prompt"], add_generation_prompt=True, tokenize=False)
        prefix = tokenizer.encode(prompt, add_special_tokens=False)
        ids = torch.tensor([prefix + targets["ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prefix) - 1 : -1]
        top_ids = torch.tensor(targets["topIds"])
        divergence = sparse_kd_loss(
            logits, top_ids, torch.tensor(targets["topLogprobs"]), torch.ones_like(top_ids, dtype=torch.bool)
        )
        divergences.append(divergence.mean())
        alternative.append(torch.softmax(logits, -1)[:, ALTERNATIVE].mean())
    return float(torch.stack(divergences).mean()), float(torch.stack(alternative).mean())


@pytest.mark.usefixtures("ray_session")
def test_a_sparse_kd_job_generates_with_top_logprobs_then_trains_the_student_toward_them(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    tokenizer = load_tokenizer(str(tiny.student))
    prompts = distinct_prompts(tmp_path / "prompts.jsonl", 16)
    records = [json.loads(line) for line in prompts.read_text().splitlines()]
    # Each question answered with the tiny task's own answer, the teacher torn at every token.
    script = {}
    for record in records:
        question, answer = record["messages"][0]["content"], record["messages"][-1]["content"]
        script[question] = [with_logprobs(completion(answer), even_logprobs(tokenizer, answer))]
    out = tmp_path / "out"
    paths = {
        "demo-output/assets/student-init": tiny.student,
        "demo-output/assets/data/student-train.jsonl": prompts,
        "demo-output/runs/generate-from-endpoint": out,
    }
    with scripted_server(script) as server:
        manifest = example_manifest(
            "generate-from-endpoint",
            paths,
            endpoint={"baseUrl": server.url, "model": "scripted"},
            topLogprobs=2,
        )
        manifest["spec"]["distillation"] = {"algorithm": "sparseKd", "kdRatio": 0.9}
        manifest["spec"]["training"]["epochs"] = 4  # maxSteps 4 of the one global batch of 16 records
        # Held-out chats no endpoint scored (the prompts' own answers): evaluated by cross-entropy.
        manifest["spec"]["data"]["eval"] = {"path": str(prompts)}
        done = invoke(["run", str(write_manifest(tmp_path / "job.yaml", manifest))])
    assert done.exit_code == 0, done.stderr
    assert server.invalid == [] and {body["top_logprobs"] for body in server.bodies} == {2}
    lines = [json.loads(line) for line in (out / "generated" / "demo-generate-from-endpoint.jsonl").open()]
    assert len(lines) == 16 and all(line["teacherLogprobs"]["topIds"] for line in lines)

    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [record for record in history if record["kind"] == "train"]
    assert len(train) == 4
    assert all(record["kd_loss"] > 0 for record in train), "the stored top-k are a KD term of every step"
    assert train[-1]["kd_loss"] < train[0]["kd_loss"]
    (evaluation,) = [record for record in history if record["kind"] == "eval"]
    assert evaluation["eval_tokens"] > 0 and evaluation["eval_ce_loss"] > 0
    before = _stored_divergence(tiny.student, lines, tokenizer)
    after = _stored_divergence(out, lines, tokenizer)
    assert after[0] < before[0], "the exported student is nearer the stored distribution"
    # Cross-entropy alone would push the alternative down; the teacher gives it half the mass everywhere.
    assert after[1] > 2 * before[1]
