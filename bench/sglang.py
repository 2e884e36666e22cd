"""The teacher step on SGLang against transformers: hidden states at every position of one micro-batch.

    PYTHONPATH=.venv/sglang-cpu .venv/bin/python -m bench.sglang [--device cpu] [--precisions fp32 bf16]
                                                                 [--batch-sizes 4 16] [--min-length 16]
                                                                 [--max-length 256] [--repeats 3]

It runs in the SGLang layer only (SGLang pins its own transformers, so it is not in .venv itself): on this
project's CPU machines put `.venv/sglang-cpu` (`make sglang-venv` builds it) in front of .venv with the
PYTHONPATH above; on a GPU image with SGLang installed, `python -m bench.sglang --device cuda`. Without
SGLang it exits at once, saying so.

One tiny Qwen3 (the GPU smoke check's `SHAPE`, heads 64 wide for SGLang's GPU attention kernels, random
weights) and one micro-batch per `--batch-sizes` entry, of token sequences whose lengths are drawn uniformly
from [--min-length, --max-length] (seeded: every run and both backends see the same batches). Per precision
the SGLang teacher (`SGLangTeacher`, its own engine, not colocated) starts and the transformers teacher
(`TransformersTeacher`) loads, both on `--device`; each scores every batch once untimed (warm-up; those
outputs give the largest difference between the two), then, per batch, the two take turns (SGLang,
transformers, SGLang, ...) for `--repeats` rounds.

Counted: a teacher step as the trainer makes one, from the call of `hidden_states(batch)` to the
[tokens, hidden] tensor on the CPU in this process, every position a loss position. SGLang: the request
through the engine's tokenizer manager, its scheduler's prefill (one sampled token, as the teacher asks for),
the hidden states' hop through shared memory and their gathering; transformers: padding to the longest
sequence, the backbone's forward pass, the gathering and the copy to the CPU. Not counted: starting the
engine or loading the model (`start s`; the first engine's includes importing SGLang into this process),
building the batch. Cells are the median over rounds with the range; `sglang speedup` is transformers'
seconds over SGLang's in the same round (above 1: SGLang is faster), its median and range over rounds.

`idle cores` is what the engine's processes (this process's children) use while it has nothing to do,
measured over `IDLE_SECONDS` after the warm-up. SGLang's scheduler polls for requests without pause unless
its `sleep_on_idle` is set: about one core, which on a machine with few cores the transformers teacher in
this process would compete with while it is timed. A CPU placement sets it (`engines.sglang.args`); a GPU
placement keeps SGLang's default, so on a GPU node expect about one host core here.
"""

import argparse
import importlib.metadata
import importlib.util
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
import torch

from bench.report import alternate, report, spread
from kubedistill.api.spec import Precision, TeacherSpec
from kubedistill.runtime.demo.tiny import build_tokenizer, save_tiny
from kubedistill.runtime.engines.layout import single_node_placement
from kubedistill.runtime.engines.sglang.smoke import SHAPE
from kubedistill.runtime.engines.sglang.teacher import SGLangTeacher
from kubedistill.runtime.engines.transformers.teacher import TransformersTeacher
from kubedistill.runtime.teacher.backend import TeacherBackend, TeacherBatch

TEXTS = ["The teacher scores every token of a sequence in one prefill, and the student learns from it."]
BACKENDS = ("sglang", "transformers")
DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16}
MEMORY_FRACTION = 0.3
"""SGLang's mem_fraction_static. On the CPU it is a share of the RAM available when the engine starts, other
processes' use included; smaller shares have failed to fit the KV cache under load, 0.3 starts reliably."""
IDLE_SECONDS = 2.0
SEED = 0
NO_SGLANG = (
    "bench.sglang needs SGLang: run it in the SGLang layer, "
    "PYTHONPATH=.venv/sglang-cpu .venv/bin/python -m bench.sglang (make sglang-venv builds the layer)"
)


def micro_batches(sizes: list[int], min_length: int, max_length: int, vocab: int) -> list[TeacherBatch]:
    """One batch per size, of random token ids in sequences of random lengths, every position wanted."""
    rng = random.Random(SEED)
    batches = []
    for size in sizes:
        lengths = [rng.randint(min_length, max_length) for _ in range(size)]
        sequences = [[rng.randrange(vocab) for _ in range(length)] for length in lengths]
        batches.append(TeacherBatch(sequences=sequences, positions=[list(range(n)) for n in lengths]))
    return batches


def step_seconds(teacher: TeacherBackend, batch: TeacherBatch) -> float:
    start = time.perf_counter()
    hidden = teacher.hidden_states(batch)
    seconds = time.perf_counter() - start
    if hidden.shape[0] != batch.num_positions:
        raise RuntimeError(f"{hidden.shape[0]} rows of hidden states for {batch.num_positions} positions")
    return seconds


def idle_cores(seconds: float) -> float:
    """Cores this process's children (the engine's scheduler and detokenizer) keep busy over `seconds`."""
    children = psutil.Process().children(recursive=True)

    def busy() -> float:
        return sum(child.cpu_times().user + child.cpu_times().system for child in children)

    before = busy()
    time.sleep(seconds)
    return (busy() - before) / seconds


def compare(
    model_path: Path, precision: Precision, device: torch.device, batches: list[TeacherBatch], repeats: int
) -> list[dict[str, Any]]:
    """Both teachers at one precision: started, warmed up on every batch, then in turn on each batch."""
    started = time.perf_counter()
    sglang = SGLangTeacher(
        TeacherSpec(mem_fraction_static=MEMORY_FRACTION),
        str(model_path),
        single_node_placement("cuda" if device.type == "cuda" else "cpu"),
        colocate=False,
        precision=precision,
    )
    start_seconds = {"sglang": time.perf_counter() - started}
    try:
        started = time.perf_counter()
        transformers = TransformersTeacher(str(model_path), DTYPES[precision], device)
        start_seconds["transformers"] = time.perf_counter() - started
        teachers: dict[str, TeacherBackend] = {"sglang": sglang, "transformers": transformers}
        warm = {name: [teacher.hidden_states(b) for b in batches] for name, teacher in teachers.items()}
        idle = idle_cores(IDLE_SECONDS)
        rows = []
        for index, batch in enumerate(batches):
            seconds = alternate(
                BACKENDS, repeats, lambda name, batch=batch: step_seconds(teachers[name], batch)
            )
            speedups = [t / s for s, t in zip(seconds["sglang"], seconds["transformers"], strict=True)]
            difference = (warm["sglang"][index].float() - warm["transformers"][index].float()).abs().max()
            for name in BACKENDS:
                on_sglang = name == "sglang"
                rows.append(
                    {
                        "teacher": f"{precision}, {len(batch.sequences)} seqs: {name}",
                        "tokens": batch.num_tokens,
                        "s/batch": spread(seconds[name]),
                        "tokens/s": spread([batch.num_tokens / s for s in seconds[name]]),
                        "sglang speedup": spread(speedups) if on_sglang else "",
                        "start s": start_seconds[name],
                        "idle cores": idle if on_sglang else "",
                        "max |diff|": float(difference) if on_sglang else "",
                    }
                )
        return rows
    finally:
        sglang.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precisions", nargs="+", type=Precision, default=[Precision.FP32, Precision.BF16])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[4, 16], help="sequences per batch")
    parser.add_argument("--min-length", type=int, default=16, help="shortest sequence, tokens")
    parser.add_argument("--max-length", type=int, default=256, help="longest sequence, tokens")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds per batch")
    args = parser.parse_args()
    # Looked up, not imported: SGLang reads its CPU switch at import, which the engine sets first.
    if importlib.util.find_spec("sglang") is None:
        sys.exit(NO_SGLANG)

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench-sglang-") as directory:
        tokenizer = build_tokenizer(TEXTS)
        model_path = save_tiny(Path(directory) / "teacher", tokenizer, SHAPE, seed=SEED)
        batches = micro_batches(args.batch_sizes, args.min_length, args.max_length, len(tokenizer))
        rows = [
            row
            for precision in args.precisions
            for row in compare(model_path, precision, device, batches, args.repeats)
        ]

    settings = {
        "device": args.device,
        "shape": asdict(SHAPE),
        "vocab": len(tokenizer),
        "precisions": [str(p) for p in args.precisions],
        "batches": [
            {"sequences": len(b.sequences), "tokens": b.num_tokens, "lengths": [len(s) for s in b.sequences]}
            for b in batches
        ],
        "length_range": [args.min_length, args.max_length],
        "repeats": args.repeats,
        "counted": "hidden_states(batch) until the [tokens, hidden] tensor is on the CPU in the bench's "
        "process, every position; not the engine's start or the model's load",
        "mem_fraction_static": MEMORY_FRACTION,
        "idle_seconds": IDLE_SECONDS,
        "torch_threads": torch.get_num_threads(),
        "versions": {
            package: importlib.metadata.version(package) for package in ("sglang", "transformers", "torch")
        },
    }
    title = (
        f"Teacher step on {args.device}, SGLang vs transformers: hidden states at every position of one "
        f"micro-batch; median (range) of {args.repeats} alternating rounds"
    )
    report("sglang", title, rows, settings)


if __name__ == "__main__":
    main()
