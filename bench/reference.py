"""What the frozen reference of DPO and GRPO costs a student rank: the time it takes to score a step's
micro-batches under the kept initial weights, beside the whole step it comes first in, and the memory of
the kept weights, beside the student's own.

In this process, on one thread (as an actor has): a one-rank FSDP2 `StudentWorker` (gloo) of a preference
job, fed a global batch of 8 pairs (16 sequences, micro-batches of 4 sequences, packed rows) made from the
demo's chats (each answer chosen over another chat's). Two students over the demo's tokenizer: the demo's
tiny one and `bench.step`'s CPU-sized one. The DPO step (`StudentWorker.train_step`: the reference's
scoring, then the forward and backward passes and AdamW) and the scoring alone (`with_reference`) run in
turn (A B A B ...), `--repeats` times; cells are the median over repeats of each run's median step (after
`WARMUP_STEPS`), with the range over repeats. What the reference costs a step is one forward pass without
gradients per micro-batch and two copies of the trainable weights' values into the parameters (the kept
ones in, the trained ones back); its memory is the trainable weights once more, in fp32, over the ranks.

    .venv/bin/python -m bench.reference [--steps 8] [--repeats 3]
"""

import argparse
import itertools
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.report import alternate, report, spread
from bench.step import WARMUP_STEPS, cpu_sized_models, median_step_ms
from kubedistill.api import parse_job
from kubedistill.runtime.demo.data import chat_records, write_jsonl
from kubedistill.runtime.demo.run import prepare

PAIRS = 8
MICRO_BATCH = 4
"""Sequences a micro-batch: two pairs."""
MEBIBYTE = 2**20


def pair_records(count: int, seed: int) -> list[dict[str, Any]]:
    """Each chat's answer chosen over the next chat's answer, in TRL's conversational preference format."""
    chats = chat_records(count + 1, seed)
    return [
        {
            "prompt": chat["messages"][:1],
            "chosen": chat["messages"][1:2],
            "rejected": [{"role": "assistant", "content": other["messages"][1]["content"]}],
        }
        for chat, other in itertools.pairwise(chats)
    ]


def manifest(student: Path, pairs: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubedistill.io/v1alpha1",
        "kind": "DistillationJob",
        "metadata": {"name": "reference-cost"},
        "spec": {
            "mode": "preference",
            "student": {"model": str(student), "replicas": 1, "gradientCheckpointing": False},
            "data": {"train": {"path": str(pairs)}, "maxLength": 512, "promptMaxLength": 64},
            "training": {
                "globalBatchSize": 2 * PAIRS,
                "microBatchSize": MICRO_BATCH,
                "learningRate": 1e-4,
                "precision": "fp32",
            },
        },
    }


def measure_student(student: Path, pairs: Path, repeats: int, steps: int) -> dict[str, Any]:
    """ms of the DPO step and of the reference's scoring alone, and MiB of the kept and of all weights."""
    import torch.distributed as dist

    from kubedistill.runtime.algorithms.dpo import DPO
    from kubedistill.runtime.cluster.actors import free_port
    from kubedistill.runtime.data.batching import shard_micro_batches
    from kubedistill.runtime.data.load import load_samples
    from kubedistill.runtime.models.loading import load_tokenizer
    from kubedistill.runtime.student.batch import MicroBatch
    from kubedistill.runtime.student.worker import RankAddress, StudentWorker

    job = parse_job(manifest(student, pairs))
    spec = job.spec
    assert spec.data.train is not None
    tokenizer = load_tokenizer(spec.student.model)
    samples = load_samples(spec.data.train, spec.data, tokenizer, mode=spec.mode).samples[: 2 * PAIRS]
    (shard,) = shard_micro_batches(samples, 1, MICRO_BATCH, None)
    batches = [
        MicroBatch.from_samples(batch, tokenizer.pad_token_id, DPO.micro_batch_extras(batch), packed=True)
        for batch in shard
    ]
    hidden: list[torch.Tensor | None] = [None] * len(batches)
    normalizer = DPO.normalizer(samples)
    worker = StudentWorker(job, RankAddress(0, 1, "127.0.0.1", free_port()), total_steps=10**6)
    steppers = {
        "DPO step": lambda: worker.train_step(batches, hidden, normalizer),
        "reference scoring": lambda: worker.with_reference(batches),
    }

    try:
        runs = alternate(list(steppers), repeats, lambda variant: median_step_ms(steppers[variant], steps))
        kept = sum(t.numel() * t.element_size() for t in worker.reference.tensors.values())
        weights = sum(p.numel() * p.element_size() for p in worker.module.student.parameters())
        tokens = sum(batch.num_tokens for batch in batches)
    finally:
        worker.close()
        if dist.is_initialized():
            dist.destroy_process_group()
    step, scoring = spread(runs["DPO step"]), spread(runs["reference scoring"])
    return {
        "DPO step ms": step,
        "reference scoring ms": scoring,
        "reference share of the step": scoring["median"] / step["median"],
        "tokens a step": tokens,
        "kept reference MiB": kept / MEBIBYTE,
        "student weights MiB": weights / MEBIBYTE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        assets = prepare(root).root / "assets"
        sized = cpu_sized_models(assets, root / "cpu-sized")
        pairs = write_jsonl(root / "pairs.jsonl", pair_records(4 * PAIRS, seed=5))
        students = {
            "demo's tiny student": assets / "student-init",
            "bench.step's CPU-sized student": sized / "student-init",
        }
        rows = [
            {"student": name, **measure_student(path, pairs, args.repeats, args.steps)}
            for name, path in students.items()
        ]
    report(
        "reference",
        "DPO's frozen reference on one FSDP2 rank: scoring time and kept memory",
        rows,
        {
            "pairs a step": PAIRS,
            "sequences a micro-batch": MICRO_BATCH,
            "packed rows": True,
            "precision": "fp32",
            "threads": 1,
            "steps": args.steps,
            "warmup steps": WARMUP_STEPS,
            "repeats": args.repeats,
        },
    )


if __name__ == "__main__":
    main()
