"""What the teacher sends per micro-batch: bytes and time to move it between two Ray actors.

    .venv/bin/python -m bench.transfer [--n 4096] [--v 151936] [--repeats 5]

For N loss tokens at Qwen3-4B (d=2560) and Qwen3-32B (d=5120) sizes, with V=151936, the same payloads
KDFlow compares: final hidden states in bf16 (what KubeDistill sends; exact), full logits in fp32 and bf16
(exact), and the top-20 token ids (int32) with their logits (fp32), which ROLL and verl send (lossy). Each
payload travels in the runtime's wire format (`kubedistill.runtime.teacher.transfer`): a producer actor
returns it to the object store, a consumer actor receives it as an argument and rebuilds the tensor. Time is
from the producer's call to the consumer's reply: each payload is sent once untimed, then the four in turn
`--repeats` times (A B C D A B C D ...), and cells are the median with the range; building the payloads is
not timed. Both actors sit on this one node, so the object store is shared memory: this is the floor of a
transfer, and a cross-node one adds the network on top, in proportion to the bytes.

Then the SGLang teacher's own hop, from its scheduler process to the engine's process, per N-token prefill
whose every position is a loss position, timed with the code that runs there (both paths in turn, `--repeats`
times; the parts' medians and the total's range):
- list path (SGLang 0.5.23 as released): the scheduler's `.cpu().clone().tolist()`, a msgpack round trip of
  the nested floats (msgpack-python standing in for SGLang's msgspec encoder: the same format), and our
  decoder `engines.sglang.args.gather_hidden_states` over them;
- shared-memory path (ours): the scheduler method that replaces SGLang's (`shared_memory_method`, called as
  SGLang's prefill loop calls it) writing bf16 rows to /dev/shm, the msgpack round trip of what is left of
  the output, and the same decoder, which now reads the rows from shared memory.
"""

import argparse
import statistics
import time
from typing import Any

import msgpack
import ray
import torch

from bench.report import alternate, report, spread
from bench.sglang_hop import decode_once, sglang_tolist
from kubedistill.runtime.cluster.session import connect, disconnect
from kubedistill.runtime.engines.sglang.hidden_states import shared_memory_method
from kubedistill.runtime.teacher.backend import TeacherBatch
from kubedistill.runtime.teacher.transfer import WireTensor, from_wire, to_wire

MODELS = {"Qwen3-4B": 2560, "Qwen3-32B": 5120}
TOP_K = 20
MB = 1e6


def _payload(kind: str, n: int, d: int, v: int) -> list[WireTensor]:
    generator = torch.Generator().manual_seed(0)
    if kind == "hidden_bf16":
        return [to_wire(torch.randn(n, d, generator=generator).to(torch.bfloat16))]
    logits = torch.randn(n, v, generator=generator)
    if kind == "logits_fp32":
        return [to_wire(logits)]
    if kind == "logits_bf16":
        return [to_wire(logits.to(torch.bfloat16))]
    values, ids = logits.topk(TOP_K, dim=-1)
    return [to_wire(ids.to(torch.int32)), to_wire(values)]


KINDS = ["hidden_bf16", "logits_fp32", "logits_bf16", f"top{TOP_K}"]


@ray.remote(num_cpus=0.5)
class Producer:
    def __init__(self) -> None:
        self.payloads: dict[str, list[WireTensor]] = {}

    def prepare(self, n: int, d: int, v: int) -> dict[str, int]:
        """Every kind's payload for one model, held together so that the kinds can be sent in turn; the
        previous model's go first (together they would take twice the memory)."""
        self.payloads = {}
        self.payloads = {kind: _payload(kind, n, d, v) for kind in KINDS}
        return {kind: sum(wire.nbytes for wire in payload) for kind, payload in self.payloads.items()}

    def send(self, kind: str) -> list[WireTensor]:
        return self.payloads[kind]


@ray.remote(num_cpus=0.5)
class Consumer:
    def receive(self, payload: list[WireTensor]) -> int:
        return sum(from_wire(wire).shape[0] for wire in payload)


def _transfer_seconds(producer: Any, consumer: Any, kind: str, n: int) -> float:
    start = time.perf_counter()
    received = ray.get(consumer.receive.remote(producer.send.remote(kind)))
    seconds = time.perf_counter() - start
    if received % n:
        raise RuntimeError(f"consumer saw {received} rows of {kind}, not a multiple of {n}")
    return seconds


def transfer_row(
    producer: Any, consumer: Any, model: str, d: int, n: int, v: int, repeats: int
) -> dict[str, Any]:
    """One model's payloads, each sent once untimed (that also sets the store up), then all of them in turn
    `repeats` times (A B C D A B C D ...): a neighbour's burst of load falls on every kind alike."""
    nbytes = ray.get(producer.prepare.remote(n, d, v))
    for kind in KINDS:
        _transfer_seconds(producer, consumer, kind, n)
    seconds = alternate(KINDS, repeats, lambda kind: _transfer_seconds(producer, consumer, kind, n))
    row: dict[str, Any] = {"model": model, "d": d}
    for kind in KINDS:
        row[f"{kind}_mb"] = nbytes[kind] / MB
        row[f"{kind}_seconds"] = spread(seconds[kind])
    hidden = statistics.median(seconds["hidden_bf16"])
    for logits in ("logits_fp32", "logits_bf16"):
        suffix = "" if logits == "logits_fp32" else "_bf16"
        row[f"bytes_ratio_logits{suffix}_over_hidden"] = nbytes[logits] / nbytes["hidden_bf16"]
        row[f"time_ratio_logits{suffix}_over_hidden"] = statistics.median(seconds[logits]) / hidden
    return row


def decode_rows(n: int, repeats: int) -> list[dict[str, Any]]:
    """Both paths of each model's hop, warmed up, then in turn `repeats` times."""
    paths = {
        "list (SGLang)": sglang_tolist,
        "shared memory (ours)": shared_memory_method(sglang_tolist, lambda: 0),
    }
    rows = []
    for model, d in MODELS.items():
        hidden = torch.randn(n, d, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        batch = TeacherBatch(sequences=[[0] * n], positions=[list(range(n))])
        for method in paths.values():
            decode_once(method, hidden, batch)  # warms the allocator and the page cache up
        timings = alternate(
            list(paths),
            repeats,
            lambda path, hidden=hidden, batch=batch: decode_once(paths[path], hidden, batch),
        )
        totals = {path: [sum(parts) for parts in timings[path]] for path in paths}
        list_total = statistics.median(totals["list (SGLang)"])
        for path in paths:
            scheduler, ipc, decode = (
                statistics.median(column) for column in zip(*timings[path], strict=True)
            )
            rows.append(
                {
                    "path": f"{model} {path}",
                    "scheduler_seconds": scheduler,
                    "ipc_seconds": ipc,
                    "decode_seconds": decode,
                    "total_seconds": spread(totals[path]),
                    "speedup_over_list": list_total / statistics.median(totals[path]),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=4096, help="loss tokens per micro-batch")
    parser.add_argument("--v", type=int, default=151936, help="vocabulary")
    parser.add_argument("--repeats", type=int, default=5, help="timed transfers per payload")
    args = parser.parse_args()

    connect(num_cpus=2)
    producer, consumer = Producer.remote(), Consumer.remote()
    rows = [
        transfer_row(producer, consumer, model, d, args.n, args.v, args.repeats)
        for model, d in MODELS.items()
    ]
    disconnect()

    settings = {"n": args.n, "v": args.v, "top_k": TOP_K, "repeats": args.repeats, "ray": ray.__version__}
    title = f"Teacher output per {args.n} tokens between two Ray actors (one node, object store), V={args.v}"
    report("transfer", title, rows, settings)
    report(
        "transfer_sglang_decode",
        f"SGLang teacher output per {args.n} tokens, scheduler process to engine process (bf16)",
        decode_rows(args.n, args.repeats),
        {"n": args.n, "repeats": args.repeats, "msgpack": ".".join(map(str, msgpack.version))},
    )


if __name__ == "__main__":
    main()
