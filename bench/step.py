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
budget per device, in padded rows. Variants run in turn (A B A B ...), `--repeats` times; cells are the
median over repeats of each run's median step (after `WARMUP_STEPS`), with the range over repeats.

A fourth (`packing_variants`, before the others; `--packing-only` runs it alone) prices padding-free packing
on log-normal lengths (median 256, up to 2048) at `bench.vs_trl`'s larger model sizes, in this process:
padded micro-batches, padded dynamic batching and packed rows, real tokens per second of the student's step
and of the step with its teacher's forward, against TRL's GKDTrainer on the same sequences.

    .venv/bin/python -m bench.step [--steps 12] [--repeats 3] [--no-dynamic-batching] [--packing-only]
        [--packing-steps 4]
"""

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.report import Goal, alternate, over_repeats, report, spread
from kubedistill.api import parse_job
from kubedistill.runtime.cluster.session import connect
from kubedistill.runtime.data.sample import Sample
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


def median_step_ms(step: Callable[[], object], steps: int) -> float:
    """`step` called `steps` times here: the median of its wall times after `WARMUP_STEPS`, in ms."""
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[WARMUP_STEPS:]) * MILLISECONDS


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

    try:
        runs = alternate(list(steppers), repeats, lambda variant: median_step_ms(steppers[variant], steps))
    finally:
        worker.close()
        if dist.is_initialized():
            dist.destroy_process_group()
    return {variant: spread(values) for variant, values in runs.items()}


# -- packing on length-skewed data, in this process ----------------------------------------------------------

SKEWED_MEDIAN = 256
"""Median sequence length of the skewed workload; lengths are log-normal like real chat data's."""
SKEWED_SIGMA = 0.9
"""ln(8) / 0.9 is 2.3 standard deviations: about 1% of the sequences are 8x the median or longer."""
SKEWED_LONGEST = 8 * SKEWED_MEDIAN
SKEWED_PROMPT = 32
SKEWED_GLOBAL_BATCH = 32
SKEWED_MICRO_BATCH = 4
SKEWED_TOKENS_PER_DEVICE = 2048
SKEWED_STEPS = 4
PACKING_VARIANTS = ("padded", "dynamic", "packed", "TRL GKDTrainer")
CPU_STUDENT = {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4, "num_attention_heads": 4}
CPU_TEACHER = {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 8}
"""`bench.vs_trl`'s larger pair: wider than the demo's models (d=64 and 96), where attention, which grows with
a row's length, outweighs the rest of the step more; heads of 32 (GQA 2:1)."""


def cpu_sized_models(assets: Path, root: Path) -> Path:
    """Student and teacher of `CPU_STUDENT` and `CPU_TEACHER` over the demo's tokenizer, laid out as the
    demo's assets (`student-init`, `teacher-init`, `data`)."""
    from kubedistill.runtime.demo.tiny import TinyShape, save_tiny
    from kubedistill.runtime.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(assets / "student-init"))
    for name, shape in (("student-init", CPU_STUDENT), ("teacher-init", CPU_TEACHER)):
        heads = shape["num_attention_heads"]
        dims = TinyShape(**shape, num_key_value_heads=heads // 2, head_dim=32, tie_word_embeddings=False)
        save_tiny(root / name, tokenizer, dims, seed=len(name))
    (root / "data").symlink_to(assets / "data")
    return root


def skewed_lengths(count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [
        min(
            SKEWED_LONGEST,
            max(SKEWED_PROMPT + 8, round(rng.lognormvariate(math.log(SKEWED_MEDIAN), SKEWED_SIGMA))),
        )
        for _ in range(count)
    ]


def skewed_samples(count: int, vocabulary: int, seed: int) -> list[Sample]:
    """Random tokens at log-normal lengths: a prompt of `SKEWED_PROMPT` tokens, every later token a target."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        Sample(
            input_ids=rng.integers(3, vocabulary, size=length, dtype=np.int32),
            target_mask=np.arange(length) >= SKEWED_PROMPT,
            source="skewed",
            prompt_length=SKEWED_PROMPT,
        )
        for length in skewed_lengths(count, seed)
    ]


def packing_variants(
    assets: Path, repeats: int, steps_per_round: int = SKEWED_STEPS
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Real (non-pad) tokens per second with padded micro-batches of `SKEWED_MICRO_BATCH`, padded dynamic
    batching and packed rows of `SKEWED_TOKENS_PER_DEVICE` tokens, and of TRL's GKDTrainer on the same
    sequences: of the student's step (a one-rank FSDP2 `StudentWorker` fed hidden states computed
    beforehand), and of the step with the teacher's forward of its micro-batches added (transformers
    teacher; TRL runs its teacher inside its step, as here, one after the other).

    On one thread each (as an actor has), in turn, `repeats` rounds of `steps_per_round` steps; a round's
    figure is its steps after the first.
    """
    import torch.distributed as dist

    from kubedistill.runtime.cluster.actors import free_port
    from kubedistill.runtime.data.batching import shard_micro_batches
    from kubedistill.runtime.engines.transformers.teacher import TransformersTeacher
    from kubedistill.runtime.models.loading import load_tokenizer
    from kubedistill.runtime.student.batch import MicroBatch
    from kubedistill.runtime.student.worker import RankAddress, StudentWorker
    from kubedistill.runtime.trainer.planning import teacher_batch

    torch.set_num_threads(1)
    manifest = job(assets, "packing", assets / "data" / "train.jsonl", 1, globalBatchSize=SKEWED_GLOBAL_BATCH)
    manifest["spec"]["distillation"] = {"loss": "jsd", "jsdBeta": 0.5, "kdRatio": 1.0}
    manifest["spec"]["data"]["maxLength"] = SKEWED_LONGEST
    spec = parse_job(manifest)
    tokenizer = load_tokenizer(spec.spec.student.model)
    pad_id = int(tokenizer.pad_token_id)
    samples = skewed_samples(SKEWED_GLOBAL_BATCH * steps_per_round, len(tokenizer), seed=5)
    steps = [samples[i : i + SKEWED_GLOBAL_BATCH] for i in range(0, len(samples), SKEWED_GLOBAL_BATCH)]
    cuts = {
        "padded": (SKEWED_MICRO_BATCH, None, False),
        "dynamic": (SKEWED_MICRO_BATCH, SKEWED_TOKENS_PER_DEVICE, False),
        "packed": (SKEWED_MICRO_BATCH, SKEWED_TOKENS_PER_DEVICE, True),
    }
    teacher = TransformersTeacher(spec.spec.teacher.model, torch.float32, torch.device("cpu"))
    plans: dict[str, list[tuple[list[MicroBatch], list[torch.Tensor | None]]]] = {}
    for variant, (size, budget, packed) in cuts.items():
        plans[variant] = []
        for batch in steps:
            (shard,) = shard_micro_batches(batch, 1, size, budget, packed)
            micro = [MicroBatch.from_samples(b, pad_id, packed=packed) for b in shard]
            hidden: list[torch.Tensor | None] = [teacher.hidden_states(teacher_batch(b)) for b in shard]
            plans[variant].append((micro, hidden))
    real = sum(len(s.input_ids) for s in samples)
    padding = {
        variant: 1.0 - real / sum(b.num_slots for micro, _ in plan for b in micro)
        for variant, plan in plans.items()
    }
    padding["TRL GKDTrainer"] = 1.0 - real / trl_slots(steps)
    micro_batches = {
        variant: sum(len(micro) for micro, _ in plan) / len(plan) for variant, plan in plans.items()
    }
    worker = StudentWorker(spec, RankAddress(0, 1, "127.0.0.1", free_port()), total_steps=10**6)

    measured = sum(len(s.input_ids) for batch in steps[1:] for s in batch)

    def measure(variant: str) -> dict[str, float]:
        if variant == "TRL GKDTrainer":
            rate = trl_tokens_per_second(assets, steps)
            return {"student": math.nan, "with teacher": rate}
        student, teaching = [], []
        for (micro, hidden), batch in zip(plans[variant], steps, strict=True):
            started = time.perf_counter()
            (shard,) = shard_micro_batches(batch, 1, *cuts[variant])
            for piece in shard:
                teacher.hidden_states(teacher_batch(piece))
            teaching.append(time.perf_counter() - started)
            started = time.perf_counter()
            worker.train_step(micro, hidden, sum(b.num_targets for b in micro))
            student.append(time.perf_counter() - started)
        return {
            "student": measured / sum(student[1:]),
            "with teacher": measured / (sum(student[1:]) + sum(teaching[1:])),
        }

    try:
        runs = alternate(list(PACKING_VARIANTS), repeats, measure)
    finally:
        worker.close()
        if dist.is_initialized():
            dist.destroy_process_group()
    rows = {
        variant: {
            "student tokens/s": spread([value["student"] for value in values]),
            "with teacher tokens/s": spread([value["with teacher"] for value in values]),
            "padding": padding[variant],
            "micro-batches/step": micro_batches.get(variant, SKEWED_GLOBAL_BATCH / SKEWED_MICRO_BATCH),
        }
        for variant, values in runs.items()
    }
    settings = {
        "lengths": f"log-normal, median {SKEWED_MEDIAN}, sigma {SKEWED_SIGMA}, "
        f"{SKEWED_PROMPT + 8}..{SKEWED_LONGEST}",
        "length_median": statistics.median(len(s.input_ids) for s in samples),
        "length_max": max(len(s.input_ids) for s in samples),
        "global_batch": SKEWED_GLOBAL_BATCH,
        "micro_batch": SKEWED_MICRO_BATCH,
        "tokens_per_device": SKEWED_TOKENS_PER_DEVICE,
        "steps_per_round": steps_per_round,
        "threads": 1,
        "loss": "jsd beta 0.5, kdRatio 1, fp32",
        "student": CPU_STUDENT,
        "teacher": CPU_TEACHER,
    }
    return rows, settings


def trl_slots(steps: list[list[Sample]]) -> int:
    """Token slots TRL's ChatML collator computes: each micro-batch padded to its longest sequence."""
    pieces = [
        batch[i : i + SKEWED_MICRO_BATCH] for batch in steps for i in range(0, len(batch), SKEWED_MICRO_BATCH)
    ]
    return sum(max(len(s.input_ids) for s in piece) * len(piece) for piece in pieces)


def trl_tokens_per_second(assets: Path, steps: list[list[Sample]]) -> float:
    """TRL's GKDTrainer (generalized JSD, beta 0.5, never on-policy) over the same sequences, in the same
    global batches and micro-batches of `SKEWED_MICRO_BATCH`, its teacher's forward inside its step. Real
    tokens per second over the steps after the first.

    TRL has no padding-free path for distillation: GKDTrainer calls both models with `input_ids` and
    `attention_mask` only (trl 1.16 `trl/experimental/gkd/gkd_trainer.py:326-337`) on batches from its
    `DataCollatorForChatML` (`trl/experimental/utils.py:269`), which pads; SFTConfig's `padding_free` is only
    read by SFTTrainer's own collator, which GKDTrainer replaces (`gkd_trainer.py:134-135`).
    """
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from bench.step_clock import StepClock

    tokenizer = AutoTokenizer.from_pretrained(assets / "student-init")
    records = [
        {
            "prompt": tokenizer.decode(s.input_ids[: s.prompt_length]),
            "input_ids": s.input_ids.tolist(),
            "completion_mask": s.target_mask.astype(int).tolist(),
        }
        for batch in steps
        for s in batch
    ]

    class InOrder(GKDTrainer):
        # The same global batches as KubeDistill's variants, not a shuffled order.
        def _get_train_sampler(self, *_: Any, **__: Any) -> SequentialSampler:
            return SequentialSampler(self.train_dataset)

    with tempfile.TemporaryDirectory() as output:
        config = GKDConfig(
            output_dir=output,
            max_steps=len(steps),
            per_device_train_batch_size=SKEWED_MICRO_BATCH,
            gradient_accumulation_steps=SKEWED_GLOBAL_BATCH // SKEWED_MICRO_BATCH,
            learning_rate=1e-3,
            lr_scheduler_type="constant",
            optim="adamw_torch",
            max_grad_norm=1.0,
            lmbda=0.0,
            beta=0.5,
            seq_kd=False,
            max_length=SKEWED_LONGEST,
            use_cpu=True,
            bf16=False,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        clock = StepClock()
        trainer = InOrder(
            model=AutoModelForCausalLM.from_pretrained(assets / "student-init"),
            teacher_model=AutoModelForCausalLM.from_pretrained(assets / "teacher-init"),
            args=config,
            train_dataset=Dataset.from_list(records),
            processing_class=tokenizer,
            callbacks=[clock],
        )
        trainer.train()
    assert len(clock.seconds) == len(steps), clock.seconds
    return sum(len(s.input_ids) for batch in steps[1:] for s in batch) / sum(clock.seconds[1:])


def report_packing(rows: dict[str, dict[str, Any]], settings: dict[str, Any], repeats: int) -> list[Goal]:
    """The packing table (`bench/results/step-packing.json`); its goals also go into the step's own report,
    whose goals `make bench` collects."""

    def median(variant: str, column: str = "student tokens/s") -> float:
        return rows[variant][column]["median"]

    packed = median("packed")
    goals = [
        Goal("packed / dynamic batching, student tokens/s", packed / median("dynamic"), 1.3),
        Goal("packed / padded, student tokens/s", packed / median("padded"), 1.5),
        Goal("packed padding share", rows["packed"]["padding"], 0.05, at_least=False),
        # "Ahead of TRL": more than 1x (the Goal's at-least compares with >=).
        Goal(
            "packed / TRL GKDTrainer, tokens/s with the teacher's forward",
            median("packed", "with teacher tokens/s") / median("TRL GKDTrainer", "with teacher tokens/s"),
            1.0,
        ),
    ]
    report(
        "step-packing",
        f"Real (non-pad) tokens per second on length-skewed data, median over {repeats} alternating rounds "
        f"of {settings['steps_per_round'] - 1} timed steps (range over rounds); padding is the share of "
        "computed token slots that are padding",
        [{"variant": variant, **row} for variant, row in rows.items()],
        {**settings, "repeats": repeats, "device": "cpu"},
        goals,
    )
    return goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--packing-steps",
        type=int,
        default=SKEWED_STEPS,
        help="steps a packing round (the first untimed), of 32 sequences each; fewer for a loaded machine",
    )
    parser.add_argument("--no-dynamic-batching", action="store_true", help="leave out the skewed-data runs")
    parser.add_argument(
        "--packing-only", action="store_true", help="only padded, dynamic and packed steps against TRL's"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        assets = prepare(root).root / "assets"
        goals: list[Goal] = []
        if not args.no_dynamic_batching or args.packing_only:
            models = cpu_sized_models(assets, root / "cpu-sized")
            rows, settings = packing_variants(models, args.repeats, args.packing_steps)
            goals = report_packing(rows, settings, args.repeats)
        if args.packing_only:
            return
        overhead = fsdp_overhead(assets, args.repeats, args.steps)
        connect()
        skewed = write_jsonl(root / "skewed.jsonl", skewed_records(16 * (args.steps + 4), seed=3))
        train = assets / "data" / "train.jsonl"
        manifests = {
            "demo models, 1 rank, micro-batch 4": job(assets, "one-rank", train, 1, microBatchSize=4),
            "demo models, 2 ranks, micro-batch 4": job(assets, "two-ranks", train, 2, microBatchSize=4),
        }
        if not args.no_dynamic_batching:
            # Padded rows, as before packing: fixed micro-batches against a token budget.
            manifests["skewed data, 2 ranks, micro-batch 4"] = job(
                assets, "fixed", skewed, 2, microBatchSize=4, packing=False
            )
            manifests["skewed data, 2 ranks, 768 tokens/device"] = job(
                assets, "dynamic", skewed, 2, maxTokensPerDevice=768, packing=False
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
        goals,
    )


if __name__ == "__main__":
    main()
