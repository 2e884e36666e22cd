"""KubeDistill against TRL's GKDTrainer: the same teacher, student, data, loss and steps, off-policy, on CPU.

    .venv/bin/python -m bench.vs_trl [--steps 32] [--train-records 256] [--eval-records 128]

The pair is tiny (`kubedistill.runtime.tiny`: Qwen3 teacher d=96 x3 layers, student d=64 x2, a BPE
vocabulary of 400 trained on the task's text); the teacher is first fine-tuned on the task for a few dozen
steps (plain PyTorch, cross-entropy on the assistant tokens), so that it has something to pass on. Records
are tokenised once, by KubeDistill's data pipeline; TRL gets the same token ids and the same targets
(`input_ids` and `completion_mask`, which its ChatML collator uses as they are), so both train on exactly the
same sequences.

Both sides: generalized JSD with beta 0.5 at temperature 1 and nothing else in the loss (TRL's GKD loss;
KubeDistill `loss: jsd, jsdBeta: 0.5, kdRatio: 1`), normalised per target token over the global batch;
global batch 16 in micro-batches of 4, AdamW (betas 0.9/0.98, no weight decay) at a constant learning rate
of 1e-3 without warm-up, gradients clipped to norm 1, fp32. TRL: `lmbda=0` (never on-policy), `seq_kd=False`.

What differs, and cannot be made the same: the order of the batches (each shuffles with its own seeded
sampler), TRL pads on the left and KubeDistill on the right, and the process layout. TRL runs teacher and
student one after the other in one process on every core (torch's default threads); KubeDistill runs on
local Ray, one teacher actor and one or two FSDP2 student ranks, each actor on one thread (as it does on
CPU), with the teacher's work for the next step dispatched while the students train.

Columns: s/step is the median over the steps after the first two (start-up and first-call costs excluded);
`vs TRL` is TRL's s/step divided by this row's (above 1: faster than TRL). `total s` is the whole run:
model loading, Ray actors, training, export. The final train loss is the mean of the last four steps' loss
(one step's batch is only 16 sequences). The eval JSD is one measurement for every row, made here after
training: the same generalized JSD of each trained student against the teacher over held-out records
(per target token), and the untrained student's for reference.

Every variant runs in a fresh process of its own.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.report import report
from kubedistill.api.spec import DataSource, DataSpec, Mode
from kubedistill.runtime.data.load import load_samples
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.demo_data import chat_records, write_jsonl
from kubedistill.runtime.tiny import STUDENT_SHAPE, TEACHER_SHAPE, build_tokenizer, save_tiny

MICRO_BATCH = 4
GLOBAL_BATCH = 16
LEARNING_RATE = 1.0e-3
ADAM_BETAS = (0.9, 0.98)
JSD_BETA = 0.5
MAX_LENGTH = 128
PROMPT_MAX_LENGTH = 64
SEED = 0
TEACHER_SFT_STEPS = 60
TEACHER_SFT_LEARNING_RATE = 3.0e-3
WARM_STEPS = 2
"""Steps left out of s/step: the first calls set up kernels, process groups and the teacher's pipeline."""
LAST_STEPS = 4
"""Steps the final train loss is averaged over."""
VARIANTS = ("trl", "kubedistill-1-rank", "kubedistill-2-ranks")


# -- assets -------------------------------------------------------------------------------------------------


def prepare(root: Path, train_records: int, eval_records: int) -> None:
    """Data, tokenizer, an untrained student and a teacher fine-tuned on the task."""
    train = chat_records(train_records, seed=SEED)
    teacher_train = chat_records(4 * train_records, seed=SEED + 2)
    held_out = chat_records(eval_records, seed=SEED + 1)
    write_jsonl(root / "train.jsonl", train)
    write_jsonl(root / "teacher-train.jsonl", teacher_train)
    write_jsonl(root / "eval.jsonl", held_out)
    texts = [" ".join(m["content"] for m in record["messages"]) for record in teacher_train + held_out]
    tokenizer = build_tokenizer(texts, vocab_size=400)
    save_tiny(root / "student", tokenizer, STUDENT_SHAPE, seed=SEED + 1)
    save_tiny(root / "teacher", tokenizer, TEACHER_SHAPE, seed=SEED)
    finetune_teacher(root / "teacher", samples(root / "teacher-train.jsonl", root / "teacher"))


def samples(path: Path, model: Path) -> list[Sample]:
    """Records of `path` as KubeDistill's pipeline tokenises them for a job with this bench's settings."""
    from transformers import AutoTokenizer

    source = DataSource(path=str(path))
    data = DataSpec(train=source, max_length=MAX_LENGTH, prompt_max_length=PROMPT_MAX_LENGTH)
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


def finetune_teacher(path: Path, train: list[Sample]) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TEACHER_SFT_LEARNING_RATE)
    model.train()
    for step in range(TEACHER_SFT_STEPS):
        start = (step * GLOBAL_BATCH) % (len(train) - GLOBAL_BATCH)
        ids, mask, labels = padded(train[start : start + GLOBAL_BATCH], model.config.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)


# -- the variants -------------------------------------------------------------------------------------------


def run_trl(root: Path, steps: int) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    tokenizer = AutoTokenizer.from_pretrained(root / "student")
    records = []
    for sample in samples(root / "train.jsonl", root / "student"):
        # Up to the last target: TRL trains on every token after the prompt, KubeDistill on the targets.
        end = max(i for i, target in enumerate(sample.target_mask) if target) + 1
        completion = [int(target) for target in sample.target_mask[:end]]
        assert completion == [0] * sample.prompt_length + [1] * (end - sample.prompt_length)
        # The collator takes the tokens from input_ids and completion_mask; it only insists on a prompt text.
        prompt = tokenizer.decode(sample.input_ids[: sample.prompt_length])
        records.append(
            {"prompt": prompt, "input_ids": list(sample.input_ids[:end]), "completion_mask": completion}
        )

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    started = time.perf_counter()
    config = GKDConfig(
        output_dir=str(root / "trl-out"),
        max_steps=steps,
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=GLOBAL_BATCH // MICRO_BATCH,
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
        max_length=MAX_LENGTH,
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
    trainer.train()
    trainer.save_model(str(root / "trl-student"))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return _row(clock.seconds, losses, time.perf_counter() - started, root / "trl-student")


def run_kubedistill(root: Path, steps: int, ranks: int) -> dict[str, Any]:
    import ray

    from kubedistill.api import parse_job
    from kubedistill.runtime.trainer import RunOptions, Trainer

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
                "maxLength": MAX_LENGTH,
                "promptMaxLength": PROMPT_MAX_LENGTH,
            },
            "training": {
                "epochs": 1000,
                "maxSteps": steps,
                "globalBatchSize": GLOBAL_BATCH,
                "microBatchSize": MICRO_BATCH,
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
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        started = time.perf_counter()
        options = RunOptions(output_dir=output, metrics_port=0, progress=False, print_summary=False)
        history = Trainer(parse_job(manifest), options).run().history
        total = time.perf_counter() - started
    finally:
        ray.shutdown()
    trains = [record for record in history if record["kind"] == "train"]
    return _row([r["step_seconds"] for r in trains], [r["loss"] for r in trains], total, output)


def _row(step_seconds: list[float], losses: list[float], total: float, student: Path) -> dict[str, Any]:
    return {
        "steps": len(step_seconds),
        "s/step": statistics.median(step_seconds[WARM_STEPS:]),
        "total s": total,
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
    for start in range(0, len(held_out), GLOBAL_BATCH):
        ids, mask, labels = padded(held_out[start : start + GLOBAL_BATCH], student.config.pad_token_id)
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


def run_variant(variant: str, root: Path, steps: int) -> dict[str, Any]:
    if variant == "trl":
        return run_trl(root, steps)
    return run_kubedistill(root, steps, ranks=1 if variant == "kubedistill-1-rank" else 2)


def in_fresh_process(variant: str, root: Path, steps: int) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.vs_trl",
            "--variant",
            variant,
            "--root",
            str(root),
            "--steps",
            str(steps),
        ],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--train-records", type=int, default=256)
    parser.add_argument("--eval-records", type=int, default=128)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.root, args.steps)))
        return

    with tempfile.TemporaryDirectory(prefix="vs-trl-") as tmp:
        root = Path(tmp)
        prepare(root, args.train_records, args.eval_records)
        results = {variant: in_fresh_process(variant, root, args.steps) for variant in VARIANTS}
        held_out = samples(root / "eval.jsonl", root / "student")
        untrained = eval_jsd(root / "student", root / "teacher", held_out)
        trl_step = results["trl"]["s/step"]
        rows = []
        for variant, result in results.items():
            row = {"variant": variant, **{k: v for k, v in result.items() if k != "student"}}
            row["vs TRL"] = trl_step / result["s/step"]
            row["eval JSD"] = eval_jsd(Path(result["student"]), root / "teacher", held_out)
            rows.append(row)
    report(
        "vs_trl",
        "KubeDistill vs TRL GKDTrainer: tiny Qwen3 pair, off-policy generalized JSD, CPU "
        f"(untrained student's eval JSD {untrained:.4g})",
        rows,
        {
            "steps": args.steps,
            "train_records": args.train_records,
            "eval_records": args.eval_records,
            "global_batch": GLOBAL_BATCH,
            "micro_batch": MICRO_BATCH,
            "learning_rate": LEARNING_RATE,
            "adam_betas": list(ADAM_BETAS),
            "jsd_beta": JSD_BETA,
            "teacher_sft_steps": TEACHER_SFT_STEPS,
            "untrained_eval_jsd": untrained,
            "torch_threads_trl": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
