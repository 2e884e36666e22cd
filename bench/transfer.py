"""What the teacher sends per micro-batch: bytes and time to move it between two Ray actors.

    .venv/bin/python -m bench.transfer [--n 4096] [--v 151936] [--repeats 5]

For N loss tokens at Qwen3-4B (d=2560) and Qwen3-32B (d=5120) sizes, with V=151936, the same payloads
KDFlow compares: final hidden states in bf16 (what KubeDistill sends; exact), full logits in fp32 and bf16
(exact), and the top-20 token ids (int32) with their logits (fp32), which ROLL and verl send (lossy). Each
payload travels in the runtime's wire format (`kubedistill.runtime.transfer`): a producer actor returns it
to the object store, a consumer actor receives it as an argument and rebuilds the tensor. Time is from the
producer's call to the consumer's reply (median of the repeats, after one untimed transfer); building the
payload is not timed. Both actors sit on this one node, so the object store is shared memory: this is the
floor of a transfer, and a cross-node one adds the network on top, in proportion to the bytes.
"""

import argparse
import statistics
import time
from typing import Any

import ray
import torch

from bench.report import report
from kubedistill.runtime.transfer import WireTensor, from_wire, to_wire

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
        self.payload: list[WireTensor] = []

    def prepare(self, kind: str, n: int, d: int, v: int) -> int:
        self.payload = []  # the previous payload goes first, so two never coexist
        self.payload = _payload(kind, n, d, v)
        return sum(wire.nbytes for wire in self.payload)

    def send(self) -> list[WireTensor]:
        return self.payload


@ray.remote(num_cpus=0.5)
class Consumer:
    def receive(self, payload: list[WireTensor]) -> int:
        return sum(from_wire(wire).shape[0] for wire in payload)


def _seconds(producer: Any, consumer: Any, n: int, repeats: int) -> float:
    ray.get(consumer.receive.remote(producer.send.remote()))  # the first one also sets the store up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        received = ray.get(consumer.receive.remote(producer.send.remote()))
        seconds.append(time.perf_counter() - start)
        if received % n:
            raise RuntimeError(f"consumer saw {received} rows, not a multiple of {n}")
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=4096, help="loss tokens per micro-batch")
    parser.add_argument("--v", type=int, default=151936, help="vocabulary")
    parser.add_argument("--repeats", type=int, default=5, help="timed transfers per payload")
    args = parser.parse_args()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    producer, consumer = Producer.remote(), Consumer.remote()
    rows = []
    for model, d in MODELS.items():
        row: dict[str, Any] = {"model": model, "d": d}
        for kind in KINDS:
            nbytes = ray.get(producer.prepare.remote(kind, args.n, d, args.v))
            row[f"{kind}_mb"] = nbytes / MB
            row[f"{kind}_seconds"] = _seconds(producer, consumer, args.n, args.repeats)
        for logits in ("logits_fp32", "logits_bf16"):
            suffix = "" if logits == "logits_fp32" else "_bf16"
            row[f"bytes_ratio_logits{suffix}_over_hidden"] = row[f"{logits}_mb"] / row["hidden_bf16_mb"]
            row[f"time_ratio_logits{suffix}_over_hidden"] = (
                row[f"{logits}_seconds"] / row["hidden_bf16_seconds"]
            )
        rows.append(row)
    ray.shutdown()

    settings = {"n": args.n, "v": args.v, "top_k": TOP_K, "repeats": args.repeats, "ray": ray.__version__}
    title = f"Teacher output per {args.n} tokens between two Ray actors (one node, object store), V={args.v}"
    report("transfer", title, rows, settings)


if __name__ == "__main__":
    main()
