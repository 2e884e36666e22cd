"""Preparing a training set: tokens a second on 1 and 2 processes, a cached restart, bytes a token resident,
and the limit.

    .venv/bin/python -m bench.data [--records 20000] [--repeats 2]
    .venv/bin/python -m bench.data --large     # 200,000 chats, once: about 25 minutes on 2 busy cores

The set is synthetic two-turn chats with skewed (log-normal) lengths, a mean near 800 tokens, in the
demo's student tokenizer (a byte-level BPE of 400 tokens trained on the demo's chats, Qwen's chat
template), written as one JSON-lines file. Each variant runs in a fresh process, in turn (`--repeats`
rounds), so none inherits another's allocator or page cache state:

- `load_samples, N processes`: what `Trainer.__init__` does for spec.data.train (`load_samples`), with N
  worker processes; tokens/s counts the samples' tokens over the call's wall time.
- `first run with a checkpoint volume`: `load_samples` on 2 processes with a cache folder of its own, as a
  job with spec.checkpoint.path prepares its set the first time: it writes the set and maps it back.
- `cached restart`: `load_samples` with the cache folder a job with spec.checkpoint.path uses, after one
  untimed run prepared the set there: what a restarted or retried job does (`data.cache`); `seconds` is the
  restart's wait for its data.
- `cross-tokenizer, 1 process`: `load_samples` with a teacher tokenizer of its own (another BPE, 600 tokens,
  trained on the same chats), as a cross-tokenizer algorithm (simpleCtkd, dskd) prepares: every record is
  tokenised twice and the spans between the two tokenisations are built. Its tokens are the student's.
- `batched tokenizer alone`: the same chats through `apply_chat_template`, then one batched call of the
  fast tokenizer with offsets, in one process with the tokenizer's own threads off
  (TOKENIZERS_PARALLELISM=false): the limit for one core (no masks, no checks, no samples).

On a machine whose other work leaves fewer than two cores free, two processes cannot run twice as fast, so
`tokens_per_cpu_s` (the tokens over the CPU time of the process and its workers) is reported beside the wall
time: equal figures on 1 and 2 processes mean the work divides without overhead, and two free cores give
the speed-up `2 x (2-process figure / 1-process figure)` (the `projected` line of the goals).

Bytes a token resident: the run's resident set after `load_samples` (the samples held) minus before it, over
the tokens held, as the issue measured it; for the cached restart that counts the pages of the memory-mapped
set it touched, which the kernel may drop and read again. `resume hash s`: the resume check's hash over
every sample (`data_identity`): what a job without a kept set computes each start; one with a kept set reads
it with the set (`resume hash s` of the cached restart is then 0).

`--large`: 200,000 chats (168 M tokens), one run each of 1 and 2 processes and the cached restart (the untimed
preparation before it included), written to `bench/results/data-200k.json`; the 20,000-chat run stays the
default (`make bench`) because this one takes about 25 minutes on a machine with 2 busy cores.
"""

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import Goal, alternate, report, spread

MEAN_TOKENS = 800
SEED = 0
TEACHER_VOCABULARY = 600
LARGE_RECORDS = 200_000


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_seconds() -> float:
    """User and system time of this process and of its children that ended (the worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def demo_tokenizer(vocab_size: int = 400) -> Any:
    from kubedistill.runtime.demo.data import chat_records
    from kubedistill.runtime.demo.tiny import build_tokenizer

    texts = [" ".join(m["content"] for m in record["messages"]) for record in chat_records(2000, SEED)]
    return build_tokenizer(texts, vocab_size), sorted({word for text in texts for word in text.split()})


def write_chats(path: Path, records: int, words: list[str]) -> None:
    """Two-turn chats whose word counts are log-normal (a few very long ones, many short)."""
    rng = random.Random(SEED)
    with path.open("w") as file:
        for _ in range(records):
            total = min(8000, max(8, int(rng.lognormvariate(math.log(250), 0.8))))
            prompt = max(3, total // 4)
            messages = [
                {"role": "user", "content": " ".join(rng.choices(words, k=prompt))},
                {"role": "assistant", "content": " ".join(rng.choices(words, k=total - prompt))},
            ]
            file.write(json.dumps({"messages": messages}) + "\n")


def measure(variant: str, path: Path) -> None:
    """One variant in this (fresh) process; prints a JSON line."""
    from kubedistill.api.spec import DataSource, DataSpec, Mode
    from kubedistill.runtime.data.load import load_samples
    from kubedistill.runtime.trainer.resume import data_identity

    tokenizer, _ = demo_tokenizer()
    source = DataSource(path=str(path))
    data = DataSpec(train=source, max_length=16384, prompt_max_length=8192)
    before = _rss_bytes()
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    if variant == "tokenizer":
        chats = [json.loads(line)["messages"] for line in path.read_text().splitlines()]
        texts = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        tokens = sum(len(ids) for ids in encoded["input_ids"])
        records = len(texts)
    else:
        cache = path.parent / "prepared" if variant == "cached" else None
        if variant == "first":
            cache = Path(tempfile.mkdtemp(dir=path.parent)) / "prepared"
        processes = {"cached": 1, "first": 2, "cross": 1}.get(variant) or int(variant)
        teacher = demo_tokenizer(TEACHER_VOCABULARY)[0] if variant == "cross" else None
        loaded = load_samples(
            source,
            data,
            tokenizer,
            mode=Mode.OFF_POLICY,
            teacher_tokenizer=teacher,
            cross_tokenizer=teacher is not None,
            processes=processes,
            cache=cache,
        )
        assert (variant == "cross") == (loaded.samples[0].target_spans is not None), "spans built"
        tokens = sum(len(sample.input_ids) for sample in loaded.samples)
        records = len(loaded.samples)
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    resident = _rss_bytes() - before
    hashed = time.perf_counter()
    if variant != "tokenizer":
        data_identity(loaded.samples, loaded.sha256)
    measured = {"seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": tokens, "records": records}
    measured["resident_bytes"] = resident
    print(json.dumps(measured | {"resume_hash_seconds": time.perf_counter() - hashed}))


def _run_fresh(variant: str, path: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.data", "--measure", variant, "--path", str(path)]
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        command, cwd=Path(__file__).parent.parent, capture_output=True, text=True, check=True, env=environment
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


VARIANTS = {
    "tokenizer": "batched tokenizer alone (1 process)",
    "1": "load_samples, 1 process",
    "2": "load_samples, 2 processes",
    "first": "first run with a checkpoint volume, 2 processes",
    "cached": "cached restart",
    "cross": "cross-tokenizer, 1 process",
}
LARGE_VARIANTS = ("1", "2", "cached")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20000, help="chats in the synthetic set")
    parser.add_argument("--repeats", type=int, default=2, help="fresh-process runs per variant")
    parser.add_argument(
        "--large",
        action="store_true",
        help=f"{LARGE_RECORDS:,} chats, 1 and 2 processes and a cached restart, once",
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.path)
        return

    variants = {key: VARIANTS[key] for key in LARGE_VARIANTS} if args.large else VARIANTS
    records, repeats = (LARGE_RECORDS, 1) if args.large else (args.records, args.repeats)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "chats.jsonl"
        _, words = demo_tokenizer()
        write_chats(path, records, words)
        _run_fresh("cached", path)
        runs = alternate(list(variants), repeats, lambda variant: _run_fresh(variant, path))
    rate = {variant: [run["tokens"] / run["seconds"] for run in results] for variant, results in runs.items()}
    median = {variant: statistics.median(values) for variant, values in rate.items()}
    cpu_rate = {
        variant: statistics.median(run["tokens"] / run["cpu_seconds"] for run in results)
        for variant, results in runs.items()
    }
    tokens = runs["1"][0]["tokens"]
    records = runs["1"][0]["records"]
    resident = {
        variant: statistics.median(run["resident_bytes"] for run in results)
        for variant, results in runs.items()
    }
    bytes_per_token = resident["1"] / tokens
    rows = [
        {
            "variant": name,
            "tokens_per_s": spread(rate[variant]),
            "seconds": spread([run["seconds"] for run in runs[variant]]),
            "us_per_record": statistics.median(run["seconds"] for run in runs[variant]) / records * 1e6,
            "ns_per_token": 1e9 / median[variant],
            "tokens_per_cpu_s": statistics.median(
                run["tokens"] / run["cpu_seconds"] for run in runs[variant]
            ),
            "resident_bytes_per_token": resident[variant] / tokens,
            "resume_hash_s": statistics.median(run["resume_hash_seconds"] for run in runs[variant]),
        }
        for variant, name in variants.items()
    ]
    goals = [
        Goal("tokens/s on one process (M)", median["1"] / 1e6, 0.5),
        Goal("2 processes / 1 process", median["2"] / median["1"], 1.8),
        Goal("2 processes / 1 process, projected on 2 free cores", 2 * cpu_rate["2"] / cpu_rate["1"], 1.8),
        Goal("bytes a token resident, 1 process, no cache", bytes_per_token, 6.0, at_least=False),
    ]
    if not args.large:
        goals[1:1] = [Goal("one process / batched tokenizer alone", median["1"] / median["tokenizer"], 0.5)]
        goals.append(
            Goal(
                "bytes a token resident, first run with a cache",
                resident["first"] / tokens,
                6.0,
                at_least=False,
            )
        )
    settings = {
        "records": records,
        "tokens": tokens,
        "mean_tokens_per_record": tokens / records,
        "tokenizer": "demo student (byte-level BPE, 400 tokens, Qwen chat template)",
        "max_length": 16384,
        "repeats": repeats,
        "tokenizers_parallelism": False,
    }
    title = (
        f"Preparing {records} synthetic chats ({tokens / 1e6:.1f} M tokens, log-normal lengths): medians of "
        f"{repeats} alternating fresh-process runs (range)"
    )
    report("data-200k" if args.large else "data", title, rows, settings, goals)


if __name__ == "__main__":
    main()
