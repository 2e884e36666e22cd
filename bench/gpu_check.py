"""`make gpu-check`: the torch path on an accelerator, with only what a bare GPU machine has.

1. The fused chunked loss against the plain one (full logits), forward + backward, in bf16 and fp32, at
   N = 8192 and 32768 tokens, d = 2560, V = 151936 (Qwen3-4B-sized): time, extra peak memory beyond the
   inputs and the student head's gradient, and the largest difference. The plain one may run out of memory
   at 32768 tokens; that is reported, not hidden.
2. The transformers teacher backend on the device: its hidden states times its head equal its logits.
3. One FSDP2 training step of a student rank on NCCL (world size 1).

Needs torch (CUDA), transformers, tokenizers, safetensors, numpy and rich; the spec needs pydantic, which a
bare machine may lack: `make gpu-wheels` downloads it (with its dependencies) into .whl/ to be carried along.
`--device cpu` runs the same checks at small sizes, to check the script itself anywhere.

    python3 -m bench.gpu_check [--device cuda] [--n 8192 32768] [--losses fkl jsd]
"""

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.report import report

GIB = 2**30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def loss_rows(
    device: torch.device, tokens: list[int], d: int, v: int, losses: list[str], repeats: int
) -> list[dict]:
    from kubedistill.runtime.losses import KDConfig

    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for n in tokens:
            for loss in losses:
                config = KDConfig(loss=loss, kd_ratio=0.5)
                generator = torch.Generator(device="cpu").manual_seed(0)
                student_hidden = torch.randn(n, d, generator=generator).to(device, dtype)
                teacher_hidden = torch.randn(n, d, generator=generator).to(device, dtype)
                student_head = (torch.randn(v, d, generator=generator) * 0.02).to(device, dtype)
                teacher_head = (torch.randn(v, d, generator=generator) * 0.02).to(device, dtype)
                labels = torch.randint(0, v, (n,), generator=generator).to(device)
                results: dict[str, Any] = {}
                values: dict[str, torch.Tensor] = {}
                for method in ("reference", "fused"):
                    try:
                        seconds, extra, value = _measure(
                            method,
                            config,
                            student_hidden,
                            student_head,
                            teacher_hidden,
                            teacher_head,
                            labels,
                            device,
                            repeats,
                        )
                        results[method] = (seconds, extra)
                        values[method] = value
                    except torch.OutOfMemoryError:
                        results[method] = None
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                rows.append(_row(loss, dtype, n, results, values))
                del student_hidden, teacher_hidden, student_head, teacher_head, labels
    return rows


def _measure(
    method, config, student_hidden, student_head, teacher_hidden, teacher_head, labels, device, repeats
):
    from kubedistill.runtime.losses import fused_kd_loss, reference_kd_loss

    times = []
    extra = 0
    value = None
    for _ in range(repeats + 1):  # the first run warms up kernels and the allocator
        hidden = student_hidden.detach().requires_grad_(True)
        head = student_head.detach().requires_grad_(True)
        gradient_bytes = head.numel() * head.element_size()
        baseline = _peak_reset(device)
        _sync(device)
        started = time.perf_counter()
        if method == "reference":
            output = reference_kd_loss(
                hidden @ head.T, teacher_hidden @ teacher_head.T, labels, config, labels.numel()
            )
        else:
            output = fused_kd_loss(hidden, head, teacher_hidden, teacher_head, labels, config, labels.numel())
        output.loss.backward()
        _sync(device)
        times.append(time.perf_counter() - started)
        extra = max(0, _peak(device) - baseline - gradient_bytes - hidden.numel() * hidden.element_size())
        value = output.loss.detach().float()
        del output, hidden, head
    return statistics.median(times[1:]), extra, value


def _row(loss: str, dtype: torch.dtype, n: int, results: dict, values: dict) -> dict:
    reference, fused = results["reference"], results["fused"]
    row: dict[str, Any] = {
        "case": f"{loss} {str(dtype).removeprefix('torch.')} N={n}",
        "reference_ms": "OOM" if reference is None else reference[0] * 1e3,
        "fused_ms": "OOM" if fused is None else fused[0] * 1e3,
        "reference_extra_gib": "OOM" if reference is None else reference[1] / GIB,
        "fused_extra_gib": "OOM" if fused is None else fused[1] / GIB,
    }
    both = reference is not None and fused is not None
    row["time_ratio_fused_over_reference"] = fused[0] / reference[0] if both else None
    row["peak_ratio_reference_over_fused"] = reference[1] / fused[1] if both and fused[1] else None
    row["abs_diff"] = float((values["reference"] - values["fused"]).abs()) if both else None
    return row


def teacher_row(device: torch.device, scratch: Path) -> dict:
    from kubedistill.runtime.demo_data import chat_records
    from kubedistill.runtime.models import load_lm_head_weight
    from kubedistill.runtime.teacher.backend import TeacherBatch
    from kubedistill.runtime.teacher.transformers_backend import TransformersTeacher
    from kubedistill.runtime.tiny import TEACHER_SHAPE, build_tokenizer, save_tiny

    texts = [" ".join(m["content"] for m in r["messages"]) for r in chat_records(200, 0)]
    path = save_tiny(scratch / "teacher", build_tokenizer(texts, 300), TEACHER_SHAPE)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    teacher = TransformersTeacher(str(path), dtype, device)
    sequences = [[5, 9, 14, 3, 22, 7], [7, 8, 2]]
    positions = [[0, 2, 4], [0, 1]]
    hidden = teacher.hidden_states(TeacherBatch(sequences, positions)).to(device)
    head = load_lm_head_weight(str(path), dtype).to(device)
    model = teacher._model
    expected = torch.cat(
        [
            model(torch.tensor([s], device=device)).logits[0, p]
            for s, p in zip(sequences, positions, strict=True)
        ]
    )
    difference = float((hidden @ head.T - expected).abs().max())
    return {
        "check": "transformers teacher: hidden states @ lm_head == logits",
        "detail": f"{str(dtype).removeprefix('torch.')}, max abs diff {difference:.3g}",
        "ok": difference < (5e-2 if dtype == torch.bfloat16 else 1e-4),
    }


def fsdp_row(device: torch.device, scratch: Path) -> dict:
    from kubedistill.api import parse_job
    from kubedistill.runtime.data.sample import Sample
    from kubedistill.runtime.demo_data import chat_records
    from kubedistill.runtime.student.batch import MicroBatch
    from kubedistill.runtime.student.worker import RankAddress, StudentWorker
    from kubedistill.runtime.tiny import STUDENT_SHAPE, build_tokenizer, save_tiny

    texts = [" ".join(m["content"] for m in r["messages"]) for r in chat_records(200, 0)]
    path = save_tiny(scratch / "student", build_tokenizer(texts, 300), STUDENT_SHAPE)
    job = parse_job(
        {
            "apiVersion": "kubedistill.io/v1alpha1",
            "kind": "DistillationJob",
            "metadata": {"name": "gpu-check"},
            "spec": {
                "mode": "selfDistillation",
                "teacher": {"backend": "transformers"},
                "student": {"model": str(path), "gradientCheckpointing": True},
                "data": {"train": {"path": "unused.jsonl"}},
                "training": {
                    "globalBatchSize": 4,
                    "learningRate": 1e-3,
                    "precision": "bf16" if device.type == "cuda" else "fp32",
                },
            },
        }
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = StudentWorker(job, RankAddress(0, 1, "127.0.0.1", port), total_steps=1)
    sample = Sample(
        input_ids=tuple(range(5, 37)),
        target_mask=(False,) * 16 + (True,) * 16,
        source="gpu-check",
        prompt_length=16,
    )
    batch = MicroBatch.from_samples([sample] * 4, pad_id=0)
    teacher_hidden = torch.randn(batch.num_targets, worker.module.teacher_head.shape[1], device=device)
    before = [p.detach().clone() for p in worker.module.parameters()]
    started = time.perf_counter()
    stats = worker.train_step(
        [batch], [teacher_hidden.to(worker.module.teacher_head.dtype)], batch.num_targets
    )
    _sync(device)
    seconds = time.perf_counter() - started
    changed = any(
        not torch.equal(b, p.detach()) for b, p in zip(before, worker.module.parameters(), strict=True)
    )
    backend = torch.distributed.get_backend()
    worker.close()
    finite = stats.kd_sum == stats.kd_sum and stats.ce_sum == stats.ce_sum
    return {
        "check": f"one FSDP2 training step on {backend}, world size 1",
        "detail": f"{seconds:.2f} s, loss finite: {finite}, weights changed: {changed}",
        "ok": changed and finite,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--d", type=int, default=2560)
    parser.add_argument("--v", type=int, default=151936)
    parser.add_argument("--losses", nargs="+", default=["fkl", "jsd"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run on a GPU machine, or pass --device cpu with small sizes")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    settings = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "d": args.d,
        "v": args.v,
    }
    report(
        "gpu_check_losses",
        "Fused chunked vs plain loss, forward+backward",
        loss_rows(device, args.n, args.d, args.v, args.losses, args.repeats),
        settings,
    )
    with tempfile.TemporaryDirectory() as scratch:
        checks = [teacher_row(device, Path(scratch)), fsdp_row(device, Path(scratch))]
    report("gpu_check_torch_path", "The torch path on the device", checks, settings)
    if not all(row["ok"] for row in checks):
        sys.exit("a check failed")


if __name__ == "__main__":
    main()
