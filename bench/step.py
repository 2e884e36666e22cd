"""Where a training step's time goes, and what dynamic batching saves on length-skewed data.

Runs real jobs on local Ray (CPU): one teacher actor (transformers) and one or two FSDP2 student ranks on
gloo, the demo's tiny Qwen3 models. Every figure is timed where it happens, by the code a cluster runs, and
comes back with the step's result (no profiler, nothing added to the step):

- teacher wait: what the driver still waited for the teacher after dispatching its work a step ahead;
- plan: the driver laying out the next step (micro-batches, the teacher's requests), while the ranks
  compute this one (inside the Ray call's time, not added to it);
- Ray call: the driver's wait for the student step beyond rank 0's time inside its actor (sending the
  micro-batches, scheduling, returning the result);
- fetch: rank 0 reading the teacher's hidden states from the object store;
- backbone, loss, backward: the student's forward passes, the fused loss's chunk loop (it computes its
  gradients in the forward), the backward passes (FSDP2's all-gathers and reduce-scatters inside);
- optimizer: the all-reduce of the loss sums with the gradient norm, gradient clipping and AdamW.

A second table prices FSDP2 itself at one rank: the same micro-batches, teacher states, loss and optimizer
through `StudentWorker.train_step` (FSDP2 over a one-rank gloo group, DTensor parameters) and through the
same model in plain PyTorch, in this process, on one thread (as an actor has). A third trains on data where
a quarter of the answers are ten times longer than the rest, with fixed-size micro-batches and with a token
budget per device. Variants run in turn (A B A B ...), `--repeats` times; cells are the median over repeats
of each run's median step (after `WARMUP_STEPS`), with the range over repeats.

    .venv/bin/python -m bench.step [--steps 12] [--repeats 3]
"""

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.report import alternate, over_repeats, report, spread
from kubedistill.api import parse_job
from kubedistill.runtime.cluster.session import connect
from kubedistill.runtime.demo.data import chat_records, write_jsonl
from kubedistill.runtime.demo.run import prepare
from kubedistill.runtime.trainer.controller import RunOptions, Trainer

WARMUP_STEPS = 2
MILLISECONDS = 1000.0
PARTS = (
    "teacher",
    "plan",
    "ray_call",
    "fetch",
    "backbone",
    "loss",
    "backward",
    "optimizer",
)


def job(assets: Path, name: str, train: Path, replicas: int = 2, **training: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubedistill.io/v1alpha1",
        "kind": "DistillationJob",
        "metadata": {"name": name},
        "spec": {
            "mode": "offPolicy",
            "teacher": {"model": str(assets / "teacher-init"), "backend": "transformers"},
            "student": {
                "model": str(assets / "student-init"),
                "replicas": replicas,
                "gradientCheckpointing": False,
            },
            "distillation": {"loss": "fkl", "kdRatio": 0.9},
            "data": {"train": {"path": str(train)}, "maxLength": 512, "promptMaxLength": 64},
            "training": {"globalBatchSize": 16, "learningRate": 1e-3, "precision": "fp32", **training},
        },
    }


def run(manifest: dict[str, Any], output: Path, steps: int) -> list[dict]:
    options = RunOptions(
        output_dir=output, stop_after_steps=steps, metrics_port=0, progress=False, print_summary=False
    )
    Trainer(parse_job(manifest), options).run()
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"][WARMUP_STEPS:]


def step_parts(records: list[dict]) -> dict[str, float]:
    """One run's median step and its parts, in milliseconds."""

    def median(key: str) -> float:
        return statistics.median(r[key] for r in records) * MILLISECONDS

    parts = {
        "teacher": median("teacher_seconds"),
        "plan": median("plan_seconds"),
        "ray_call": statistics.median(r["student_call_seconds"] - r["actor_seconds"] for r in records)
        * MILLISECONDS,
        "fetch": median("fetch_seconds"),
        "backbone": median("backbone_seconds"),
        "loss": median("loss_seconds"),
        "backward": median("backward_seconds"),
        "optimizer": median("optimizer_seconds"),
    }
    return {"step": median("step_seconds"), **parts}


def skewed_records(count: int, seed: int) -> list[dict]:
    """Chats where a quarter of the answers are about ten times longer than the rest."""
    rng = random.Random(seed)
    records = chat_records(count, seed)
    for record in records:
        if rng.random() < 0.25:
            answer = record["messages"][1]["content"]
            record["messages"][1]["content"] = " ".join([answer] * rng.randint(8, 12))
    return records


# -- FSDP2 at one rank against plain PyTorch, in this process ---------------------------------------------


def fsdp_overhead(assets: Path, repeats: int, steps: int) -> dict[str, dict[str, float]]:
    """ms per step of the same work through a one-rank FSDP2 `StudentWorker` and through plain PyTorch."""
    import torch.distributed as dist

    from kubedistill.runtime.cluster.actors import free_port
    from kubedistill.runtime.data.batching import shard_micro_batches
    from kubedistill.runtime.data.load import load_samples
    from kubedistill.runtime.engines.transformers.teacher import TransformersTeacher
    from kubedistill.runtime.losses import fused_kd_loss
    from kubedistill.runtime.models.loading import load_causal_lm, load_lm_head_weight, load_tokenizer
    from kubedistill.runtime.models.roles import kd_config
    from kubedistill.runtime.student.batch import MicroBatch
    from kubedistill.runtime.student.worker import RankAddress, StudentWorker
    from kubedistill.runtime.trainer.planning import teacher_batch

    torch.set_num_threads(1)
    spec = parse_job(job(assets, "fsdp-overhead", assets / "data" / "train.jsonl", 1, microBatchSize=4))
    tokenizer = load_tokenizer(spec.spec.student.model)
    samples = load_samples(spec.spec.data.train, spec.spec.data, tokenizer, mode=spec.spec.mode).samples
    (shard,) = shard_micro_batches(samples[:16], 1, 4, None)
    batches = [MicroBatch.from_samples(batch, tokenizer.pad_token_id) for batch in shard]
    teacher = TransformersTeacher(spec.spec.teacher.model, torch.float32, torch.device("cpu"))
    hidden = [teacher.hidden_states(teacher_batch(batch)) for batch in shard]
    normalizer = sum(b.num_targets for b in batches)

    worker = StudentWorker(spec, RankAddress(0, 1, "127.0.0.1", free_port()), total_steps=10**6)
    training = spec.spec.training
    model = load_causal_lm(spec.spec.student.model, torch.float32)
    teacher_head = load_lm_head_weight(spec.spec.teacher.model, torch.float32)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=training.learning_rate,
        betas=tuple(training.adam_betas),
        weight_decay=training.weight_decay,
        foreach=True,
    )
    config = kd_config(spec)

    def plain_step() -> None:
        for batch, states in zip(batches, hidden, strict=True):
            out = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            selected = out.last_hidden_state[batch.rows, batch.columns]
            loss = fused_kd_loss(
                selected, model.lm_head.weight, states, teacher_head, batch.labels, config, normalizer
            )
            loss.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), training.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steppers = {
        "FSDP2, 1 rank": lambda: worker.train_step(batches, hidden, normalizer),
        "plain PyTorch": plain_step,
    }

    def measure(variant: str) -> float:
        seconds = []
        for _ in range(steps):
            started = time.perf_counter()
            steppers[variant]()
            seconds.append(time.perf_counter() - started)
        return statistics.median(seconds[WARMUP_STEPS:]) * MILLISECONDS

    try:
        runs = alternate(list(steppers), repeats, measure)
    finally:
        worker.close()
        if dist.is_initialized():
            dist.destroy_process_group()
    return {variant: spread(values) for variant, values in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-dynamic-batching", action="store_true", help="leave out the skewed-data runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        assets = prepare(root).root / "assets"
        overhead = fsdp_overhead(assets, args.repeats, args.steps)
        connect()
        skewed = write_jsonl(root / "skewed.jsonl", skewed_records(16 * (args.steps + 4), seed=3))
        train = assets / "data" / "train.jsonl"
        manifests = {
            "demo models, 1 rank, micro-batch 4": job(assets, "one-rank", train, 1, microBatchSize=4),
            "demo models, 2 ranks, micro-batch 4": job(assets, "two-ranks", train, 2, microBatchSize=4),
        }
        if not args.no_dynamic_batching:
            manifests["skewed data, 2 ranks, micro-batch 4"] = job(
                assets, "fixed", skewed, 2, microBatchSize=4
            )
            manifests["skewed data, 2 ranks, 768 tokens/device"] = job(
                assets, "dynamic", skewed, 2, maxTokensPerDevice=768
            )
        counter = iter(range(10**6))
        runs = alternate(
            list(manifests),
            args.repeats,
            lambda name: step_parts(run(manifests[name], root / f"run-{next(counter)}", args.steps)),
        )

    rows = [{"run": name, **over_repeats(results)} for name, results in runs.items()]
    one_rank = overhead["FSDP2, 1 rank"]["median"]
    plain = overhead["plain PyTorch"]["median"]
    speedup = None
    if not args.no_dynamic_batching:
        fixed, dynamic = (statistics.median(r["step"] for r in runs[name]) for name in list(manifests)[2:])
        speedup = fixed / dynamic
    rows += [
        {"run": f"in-process, {name}", "step": values, **dict.fromkeys(PARTS, "")}
        for name, values in overhead.items()
    ]
    report(
        "step",
        f"Step time in ms, median over {args.repeats} alternating runs of {args.steps - WARMUP_STEPS} steps "
        f"(range over runs); FSDP2 at one rank {one_rank / plain:.2f}x plain PyTorch's step"
        + ("" if speedup is None else f"; dynamic batching {speedup:.2f}x"),
        rows,
        {
            "steps": args.steps,
            "warmup_steps": WARMUP_STEPS,
            "repeats": args.repeats,
            "unit": "ms",
            "fsdp2_one_rank_over_plain": one_rank / plain,
            "dynamic_batching_speedup": speedup,
            "teacher_actors": 1,
            "device": "cpu",
        },
    )


if __name__ == "__main__":
    main()
