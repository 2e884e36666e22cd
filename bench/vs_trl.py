"""KubeDistill against TRL's GKDTrainer: the same teacher, student, data, loss and steps, off-policy, on CPU.

    .venv/bin/python -m bench.vs_trl [--pairs tiny,larger] [--repeats 3] [--train-records 256]
                                     [--eval-records 128]

Two pairs (`PAIRS`), both Qwen3 models built from configs (`kubedistill.runtime.demo.tiny`) over a BPE
vocabulary of 400 trained on the task's text: `tiny` (teacher d=96 x3 layers, student d=64 x2, sequences
up to 128 tokens, global batch 16, 32 steps), where fixed costs per step dominate, and `larger` (teacher
d=256 x4 layers, about 4x the student's d=128 x4 parameters; answers long enough to fill 512-token
sequences; global batch 8 in micro-batches of 2, 10 steps), where compute dominates. The teacher is first
fine-tuned on the task (plain PyTorch, cross-entropy on the assistant tokens), so that it has something to
pass on. Records
are tokenised once, by KubeDistill's data pipeline; TRL gets the same token ids and the same targets
(`input_ids` and `completion_mask`, which its ChatML collator uses as they are), so both train on exactly the
same sequences.

Both sides: generalized JSD with beta 0.5 at temperature 1 and nothing else in the loss (TRL's GKD loss;
KubeDistill `loss: jsd, jsdBeta: 0.5, kdRatio: 1`), normalised per target token over the global batch;
the pair's global batch and micro-batches, AdamW (betas 0.9/0.98, no weight decay) at a constant learning rate
of 1e-3 without warm-up, gradients clipped to norm 1, fp32. TRL: `lmbda=0` (never on-policy), `seq_kd=False`.

What differs, and cannot be made the same: the order of the batches (each shuffles with its own seeded
sampler), TRL pads on the left and KubeDistill on the right, and the process layout. TRL runs teacher and
student one after the other in one process on every core (torch's default threads); KubeDistill runs on
local Ray, one teacher actor and one or two FSDP2 student ranks, each actor on one thread (as it does on
CPU), with the teacher's work for the next step dispatched while the students train. Both use the
machine's cores: TRL through torch's threads (one per core), KubeDistill through its actors.

Every variant runs in a fresh process, the three in turn (TRL, 1 rank, 2 ranks, TRL, ...) `--repeats` times.
Columns: s/step is the median over the steps after the first two (start-up and first-call costs excluded),
`total s` the whole run as a user waits for it: the fresh process's wall time from its launch to its exit
(Python's start, imports, reading the data, for KubeDistill Ray's start, the actors and their models,
training, the export or TRL's save, shutting down; KubeDistill starts and stops Ray as `kubedistill run` does
and its process ends as the installed command's does, without the interpreter's teardown, TRL's as a Python
script's), each the median over repeats with their range; `vs TRL` is TRL's median s/step over this row's
(above 1: faster than TRL), `total / TRL` this row's total over TRL's. The start-up columns split the total
(`STARTUP_PARTS`; what is left is the final evaluation, the export and shutting down). KubeDistill's rows
carry rank 0's step breakdown in ms (`bench.step` explains each part). The final train loss is the mean of the
last four steps' loss (one step's batch is only 16 sequences). The eval JSD is one measurement for every row,
made here after training: the same generalized JSD of each trained student against the teacher over held-out
records (per target token), and the untrained student's for reference.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench.report import Goal, alternate, report, spread
from bench.step import PARTS, step_parts
from kubedistill.api.spec import DataSource, DataSpec, Mode
from kubedistill.cli.exit import exit_without_teardown
from kubedistill.runtime.data.load import load_samples
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.demo.data import chat_records, write_jsonl
from kubedistill.runtime.demo.tiny import STUDENT_SHAPE, TEACHER_SHAPE, TinyShape, build_tokenizer, save_tiny

LEARNING_RATE = 1.0e-3
ADAM_BETAS = (0.9, 0.98)
JSD_BETA = 0.5
PROMPT_MAX_LENGTH = 64
SEED = 0
TEACHER_SFT_LEARNING_RATE = 3.0e-3


@dataclass(frozen=True)
class Pair:
    student: TinyShape
    teacher: TinyShape
    max_length: int
    global_batch: int
    micro_batch: int
    steps: int
    teacher_sft_steps: int
    exchanges_per_answer: int
    """Answers are this many of the task's answers joined: 1 keeps them short, more fill long sequences."""


PAIRS = {
    "tiny": Pair(STUDENT_SHAPE, TEACHER_SHAPE, 128, 16, 4, 32, 60, 1),
    "larger": Pair(
        TinyShape(hidden_size=128, intermediate_size=384, num_hidden_layers=4),
        TinyShape(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=32,
            tie_word_embeddings=False,
        ),
        512,
        8,
        2,
        10,
        10,
        24,
    ),
}
WARM_STEPS = 2
"""Steps left out of s/step: the first calls set up kernels, process groups and the teacher's pipeline."""
LAST_STEPS = 4
"""Steps the final train loss is averaged over."""
VARIANTS = ("trl", "kubedistill-1-rank", "kubedistill-2-ranks")
STARTUP_PARTS = ("driver s", "ray.init s", "actors s", "train s")
"""Where the whole run's time goes: the process's start, imports and data (TRL: up to building its trainer),
Ray's start, the actors' start with their imports and models, the training loop (TRL: `trainer.train()`)."""
EVAL_BATCH = 16


# -- assets -------------------------------------------------------------------------------------------------


def long_records(count: int, seed: int, exchanges: int) -> list[dict]:
    """Chats whose answer is `exchanges` of the task's answers, one after the other."""
    records = chat_records(count * exchanges, seed)
    for index, record in enumerate(records[:count]):
        answers = records[index * exchanges : (index + 1) * exchanges]
        record["messages"][1]["content"] = " ".join(r["messages"][1]["content"] for r in answers)
    return records[:count]


def prepare(root: Path, pair: Pair, train_records: int, eval_records: int) -> None:
    """Data, tokenizer, an untrained student and a teacher fine-tuned on the task."""
    exchanges = pair.exchanges_per_answer
    train = long_records(train_records, SEED, exchanges)
    teacher_train = long_records(4 * train_records, SEED + 2, exchanges)
    held_out = long_records(eval_records, SEED + 1, exchanges)
    write_jsonl(root / "train.jsonl", train)
    write_jsonl(root / "teacher-train.jsonl", teacher_train)
    write_jsonl(root / "eval.jsonl", held_out)
    texts = [" ".join(m["content"] for m in record["messages"]) for record in teacher_train + held_out]
    tokenizer = build_tokenizer(texts, vocab_size=400)
    save_tiny(root / "student", tokenizer, pair.student, seed=SEED + 1)
    save_tiny(root / "teacher", tokenizer, pair.teacher, seed=SEED)
    finetune_teacher(root / "teacher", pair, samples(root / "teacher-train.jsonl", root / "teacher", pair))


def samples(path: Path, model: Path, pair: Pair) -> list[Sample]:
    """Records of `path` as KubeDistill's pipeline tokenises them for a job with this bench's settings."""
    from transformers import AutoTokenizer

    source = DataSource(path=str(path))
    data = DataSpec(train=source, max_length=pair.max_length, prompt_max_length=PROMPT_MAX_LENGTH)
    tokenizer = AutoTokenizer.from_pretrained(model)
    return load_samples(source, data, tokenizer, mode=Mode.OFF_POLICY).samples


def padded(batch: list[Sample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, labels with -100 off the targets), right-padded."""
    width = max(len(s.input_ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100)
    for row, sample in enumerate(batch):
        n = len(sample.input_ids)
        ids[row, :n] = torch.tensor(sample.input_ids)
        mask[row, :n] = 1
        targets = torch.tensor(sample.target_mask)
        labels[row, :n] = torch.where(targets, torch.tensor(sample.input_ids), -100)
    return ids, mask, labels


def finetune_teacher(path: Path, pair: Pair, train: list[Sample]) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TEACHER_SFT_LEARNING_RATE)
    model.train()
    batch = pair.global_batch
    for step in range(pair.teacher_sft_steps):
        start = (step * batch) % (len(train) - batch)
        ids, mask, labels = padded(train[start : start + batch], model.config.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)


# -- the variants -------------------------------------------------------------------------------------------


def run_trl(root: Path, pair: Pair) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from bench.step_clock import StepClock

    tokenizer = AutoTokenizer.from_pretrained(root / "student")
    records = []
    for sample in samples(root / "train.jsonl", root / "student", pair):
        # Up to the last target: TRL trains on every token after the prompt, KubeDistill on the targets.
        end = max(i for i, target in enumerate(sample.target_mask) if target) + 1
        completion = [int(target) for target in sample.target_mask[:end]]
        assert completion == [0] * sample.prompt_length + [1] * (end - sample.prompt_length)
        # The collator takes the tokens from input_ids and completion_mask; it only insists on a prompt text.
        prompt = tokenizer.decode(sample.input_ids[: sample.prompt_length])
        records.append(
            {"prompt": prompt, "input_ids": sample.input_ids[:end].tolist(), "completion_mask": completion}
        )

    built = since_launch()
    config = GKDConfig(
        output_dir=str(root / "trl-out"),
        max_steps=pair.steps,
        per_device_train_batch_size=pair.micro_batch,
        gradient_accumulation_steps=pair.global_batch // pair.micro_batch,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        adam_beta1=ADAM_BETAS[0],
        adam_beta2=ADAM_BETAS[1],
        weight_decay=0.0,
        max_grad_norm=1.0,
        lmbda=0.0,
        beta=JSD_BETA,
        seq_kd=False,
        max_length=pair.max_length,
        seed=SEED,
        use_cpu=True,
        bf16=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    clock = StepClock()
    trainer = GKDTrainer(
        model=AutoModelForCausalLM.from_pretrained(root / "student"),
        teacher_model=AutoModelForCausalLM.from_pretrained(root / "teacher"),
        args=config,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        callbacks=[clock],
    )
    training = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - training
    trainer.save_model(str(root / "trl-student"))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    row = _row(clock.seconds, losses, root / "trl-student")
    return {**row, "driver s": built, "train s": train_seconds}


def run_kubedistill(root: Path, pair: Pair, ranks: int) -> dict[str, Any]:
    from kubedistill.api import parse_job
    from kubedistill.runtime.cluster.session import connect, disconnect
    from kubedistill.runtime.trainer.controller import RunOptions, Trainer

    output = root / f"kubedistill-{ranks}"
    manifest = {
        "apiVersion": "kubedistill.io/v1alpha1",
        "kind": "DistillationJob",
        "metadata": {"name": "vs-trl"},
        "spec": {
            "teacher": {"model": str(root / "teacher"), "backend": "transformers"},
            "student": {"model": str(root / "student"), "replicas": ranks, "gradientCheckpointing": False},
            "distillation": {"loss": "jsd", "jsdBeta": JSD_BETA, "temperature": 1.0, "kdRatio": 1.0},
            "data": {
                "train": {"path": str(root / "train.jsonl")},
                "maxLength": pair.max_length,
                "promptMaxLength": PROMPT_MAX_LENGTH,
            },
            "training": {
                "epochs": 1000,
                "maxSteps": pair.steps,
                "globalBatchSize": pair.global_batch,
                "microBatchSize": pair.micro_batch,
                "learningRate": LEARNING_RATE,
                "lrScheduler": "constant",
                "warmupRatio": 0.0,
                "adamBetas": list(ADAM_BETAS),
                "weightDecay": 0.0,
                "maxGradNorm": 1.0,
                "precision": "fp32",
                "seed": SEED,
            },
        },
    }
    options = RunOptions(output_dir=output, metrics_port=0, progress=False, print_summary=False)
    trainer = Trainer(parse_job(manifest), options)  # the data is read before Ray starts, as `run` does
    built = since_launch()
    started = time.perf_counter()
    connect()  # Ray as `kubedistill run` starts it; the process ends as the command does (`main`)
    ray_seconds = time.perf_counter() - started
    try:
        result = trainer.run()
    finally:
        disconnect()
    history = result.records()
    trains = [record for record in history if record["kind"] == "train"]
    row = _row([r["step_seconds"] for r in trains], [r["loss"] for r in trains], output)
    return {
        **row,
        "driver s": built,
        "ray.init s": ray_seconds,
        "actors s": result.summary["start_seconds"],
        "train s": result.summary["train_seconds"],
        **{f"{part} ms": ms for part, ms in step_parts(trains[WARM_STEPS:]).items() if part != "step"},
    }


LAUNCHED = "KUBEDISTILL_BENCH_LAUNCHED"
"""The wall-clock time the parent launched this process at (its start-up is part of the run)."""


def since_launch() -> float:
    return time.time() - float(os.environ[LAUNCHED])


def _row(step_seconds: list[float], losses: list[float], student: Path) -> dict[str, Any]:
    return {
        "steps": len(step_seconds),
        "s/step": statistics.median(step_seconds[WARM_STEPS:]),
        "first loss": losses[0],
        "final train loss": statistics.fmean(losses[-LAST_STEPS:]),
        "student": str(student),
    }


# -- the one evaluation -------------------------------------------------------------------------------------


@torch.no_grad()
def eval_jsd(student_dir: Path, teacher_dir: Path, held_out: list[Sample]) -> float:
    """Generalized JSD (beta 0.5, T=1) of the student against the teacher per target token, by TRL's own
    loss function, over every held-out record."""
    from transformers import AutoModelForCausalLM
    from trl.experimental.gkd import GKDTrainer

    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    total, tokens = 0.0, 0
    for start in range(0, len(held_out), EVAL_BATCH):
        ids, mask, labels = padded(held_out[start : start + EVAL_BATCH], student.config.pad_token_id)
        shifted = labels[:, 1:]
        jsd = GKDTrainer.generalized_jsd_loss(
            student(input_ids=ids, attention_mask=mask).logits[:, :-1],
            teacher(input_ids=ids, attention_mask=mask).logits[:, :-1],
            labels=shifted,
            beta=JSD_BETA,
            reduction="sum",
        )
        total += float(jsd)
        tokens += int((shifted != -100).sum())
    return total / tokens


# -- orchestration ------------------------------------------------------------------------------------------


def run_variant(variant: str, root: Path, pair: Pair) -> dict[str, Any]:
    if variant == "trl":
        return run_trl(root, pair)
    return run_kubedistill(root, pair, ranks=1 if variant == "kubedistill-1-rank" else 2)


def in_fresh_process(variant: str, root: Path, pair: str) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "bench.vs_trl",
        "--variant",
        variant,
        "--root",
        str(root),
        "--pairs",
        pair,
    ]
    launched = time.time()
    done = subprocess.run(
        command,
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={**os.environ, LAUNCHED: repr(launched)},
    )
    process_seconds = time.time() - launched
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-4000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process s": process_seconds}


def compare(name: str, repeats: int, train_records: int, eval_records: int) -> tuple[list[dict], list[Goal]]:
    """Rows and goals of one pair: every variant `repeats` times, in turn."""
    pair = PAIRS[name]
    with tempfile.TemporaryDirectory(prefix=f"vs-trl-{name}-") as tmp:
        root = Path(tmp)
        prepare(root, pair, train_records, eval_records)
        counter = iter(range(10**6))

        def once(variant: str) -> dict[str, Any]:
            # Each run writes its own student; the last one of each variant is evaluated.
            run_root = root / f"run-{next(counter)}"
            run_root.mkdir()
            for item in ("train.jsonl", "student", "teacher"):
                (run_root / item).symlink_to(root / item)
            return in_fresh_process(variant, run_root, name)

        runs = alternate(VARIANTS, repeats, once)
        held_out = samples(root / "eval.jsonl", root / "student", pair)
        untrained = eval_jsd(root / "student", root / "teacher", held_out)
        trl_step = statistics.median(r["s/step"] for r in runs["trl"])
        trl_total = statistics.median(r["process s"] for r in runs["trl"])
        rows, goals = [], []
        for variant, results in runs.items():
            step = statistics.median(r["s/step"] for r in results)
            total = statistics.median(r["process s"] for r in results)
            row: dict[str, Any] = {
                "variant": f"{name}: {variant}",
                "s/step": spread([r["s/step"] for r in results]),
                "vs TRL": trl_step / step,
                "total s": spread([r["process s"] for r in results]),
                "total / TRL": total / trl_total,
                **{
                    part: statistics.median(r[part] for r in results) if part in results[0] else ""
                    for part in STARTUP_PARTS
                },
                "final train loss": statistics.median(r["final train loss"] for r in results),
                "eval JSD": eval_jsd(Path(results[-1]["student"]), root / "teacher", held_out),
                "untrained eval JSD": untrained,
            }
            for part in PARTS:
                values = [r[f"{part} ms"] for r in results if f"{part} ms" in r]
                row[f"{part} ms"] = statistics.median(values) if values else ""
            rows.append(row)
            if variant != "trl":
                goals.append(Goal(f"{name}, {variant}: TRL's s/step / ours", trl_step / step, 1.0))
                if variant == "kubedistill-1-rank":
                    goals.append(Goal(f"{name}, {variant}: whole run / TRL's", total / trl_total, 2.0, False))
    return rows, goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated pairs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-records", type=int, default=256)
    parser.add_argument("--eval-records", type=int, default=128)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    pairs = args.pairs.split(",")
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.root, PAIRS[pairs[0]])))
        if args.variant != "trl":
            # As the installed `kubedistill` ends (`kubedistill.cli.commands.main`); TRL's script ends as
            # a Python script does.
            exit_without_teardown(0)
        return

    rows, goals = [], []
    for name in pairs:
        pair_rows, pair_goals = compare(name, args.repeats, args.train_records, args.eval_records)
        rows += pair_rows
        goals += pair_goals
    report(
        "vs_trl",
        "KubeDistill vs TRL GKDTrainer: off-policy generalized JSD (beta 0.5), fp32, CPU; s/step and "
        f"total s: median (range) of {args.repeats} alternating runs",
        rows,
        {
            "pairs": {name: asdict(PAIRS[name]) for name in pairs},
            "repeats": args.repeats,
            "train_records": args.train_records,
            "eval_records": args.eval_records,
            "learning_rate": LEARNING_RATE,
            "adam_betas": list(ADAM_BETAS),
            "jsd_beta": JSD_BETA,
            "torch_threads_trl": torch.get_num_threads(),
            "torch_threads_kubedistill_per_actor": 1,
        },
        goals,
    )


if __name__ == "__main__":
    main()
