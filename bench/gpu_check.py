"""`make gpu-check`: the torch path on an accelerator, with only what a bare GPU machine has, as one table.

1. The fused chunked loss against the plain one (full logits), forward + backward in bf16, at N = 8192 and
   32768 tokens, d = 2560, V = 151936 (Qwen3-4B-sized): time, extra peak memory beyond the inputs and the
   student head's gradient, and the largest difference. The plain one may run out of memory at 32768 tokens;
   that is reported, not hidden.
2. The transformers teacher backend on the device: its hidden states times its head equal its logits.
3. One FSDP2 training step of a student rank on the group the GPU path builds (`process_group_backend`:
   NCCL for CUDA tensors, gloo for the CPU ones: loss sums, `all_ranks_agree`), world size 1, with the
   optimizer on the device and with `cpuOffload` (clipping and `full_tensor()` on CPU shards).
4. The SGLang teacher's hidden-state hop without SGLang: the scheduler method that replaces SGLang's, fed
   the device's bf16 hidden states of a 4096-token prefill, against SGLang's `.tolist()`, both decoded by
   the teacher's decoder: time of each and equality of the rows.
5. On CUDA only: the student's attention kernels (spec.student.attention: flash_attention_2,
   flash_attention_3, flex_attention) and Liger's kernels (spec.student.ligerKernel) against sdpa on a tiny
   Qwen3 in bf16: the same logits; a kernel whose package is missing is reported so, not failed.
6. On CUDA only: colocation's offload (`student_offload`): the GPU memory a trained student rank frees when
   an engine's turn comes, and a step trained after it came back.
7. Padding-free packing (`spec.training.packing`): the same length-skewed samples (log-normal lengths) as
   padded micro-batches and as packed rows, through one FSDP2 student rank: equal loss sums (evaluated on
   the same weights) and the time of a training step each, with real tokens per second.
8. On CUDA with two GPUs: a context-parallel step (spec.student.contextParallel 2, NCCL, fp32 without tf32)
   against the same two ranks' unsplit step: loss and gradients. With fewer GPUs the row says it did not run.

Needs torch (CUDA), transformers, tokenizers, safetensors, numpy and rich; the spec needs pydantic, which a
bare machine may lack: `make gpu-wheels` downloads it (with its dependencies) into .whl/ to be carried along.
`--device cpu` runs the same checks at small sizes, to check the script itself anywhere (a test does).

    python3 -m bench.gpu_check [--device cuda] [--n 8192 32768] [--losses fkl jsd]
"""

import argparse
import math
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench.report import report

if TYPE_CHECKING:
    from kubedistill.api.job import DistillationJob
    from kubedistill.runtime.demo.tiny import TinyShape
    from kubedistill.runtime.student.worker import StudentWorker

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

    dtype = torch.bfloat16
    rows = []
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
            rows.append(_loss_row(f"{loss} bf16 N={n}, d={d}, V={v}", results, values))
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


def _check(
    check: str, ok: bool, detail: str, seconds: float | None = None, extra_gib: float | None = None
) -> dict:
    """One row of the table: every check has the same columns (the JSON keeps the numbers)."""
    return {"check": check, "ok": ok, "seconds": seconds, "extra_gib": extra_gib, "detail": detail}


def _loss_row(case: str, results: dict, values: dict) -> dict:
    reference, fused = results["reference"], results["fused"]
    if fused is None:
        return _check(f"fused loss, {case}", False, "the fused loss ran out of memory")
    if reference is None:
        return _check(f"fused loss, {case}", True, "the plain loss ran out of memory", *fused)
    difference = float((values["reference"] - values["fused"]).abs())
    scale = max(1.0, float(values["reference"].abs()))
    detail = (
        f"plain {reference[0] * 1e3:.0f} ms, +{reference[1] / GIB:.2f} GiB; "
        f"fused/plain time {fused[0] / reference[0]:.2f}x; |diff| {difference:.3g}"
    )
    return _check(f"fused loss, {case}", difference <= 2e-2 * scale, detail, fused[0], fused[1] / GIB)


def teacher_row(device: torch.device, scratch: Path) -> dict:
    from kubedistill.runtime.demo.data import chat_records
    from kubedistill.runtime.demo.tiny import TEACHER_SHAPE, build_tokenizer, save_tiny
    from kubedistill.runtime.engines.transformers.teacher import TransformersTeacher
    from kubedistill.runtime.models.loading import load_lm_head_weight
    from kubedistill.runtime.teacher.backend import TeacherBatch

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
    return _check(
        "transformers teacher: hidden states @ lm_head == logits",
        difference < (5e-2 if dtype == torch.bfloat16 else 1e-4),
        f"{str(dtype).removeprefix('torch.')}, max abs diff {difference:.3g}",
    )


def fsdp_row(device: torch.device, scratch: Path, cpu_offload: bool) -> dict:
    from kubedistill.runtime.data.sample import Sample
    from kubedistill.runtime.student.batch import MicroBatch
    from kubedistill.runtime.student.parallelize import process_group_backend

    path = _tiny_student(scratch)
    job = _job(
        "gpu-check",
        {"model": str(path), "gradientCheckpointing": True, "cpuOffload": cpu_offload},
        {
            "globalBatchSize": 4,
            "learningRate": 1e-3,
            "precision": "bf16" if device.type == "cuda" else "fp32",
        },
    )
    worker = _one_rank(job, total_steps=1)
    sample = Sample(
        input_ids=np.arange(5, 37),
        target_mask=np.arange(32) >= 16,
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
    backend = torch.distributed.get_backend_config()
    cpu_and_device = backend == process_group_backend(device.type) and "cpu:gloo" in backend
    worker.close()
    finite = stats.kd_sum == stats.kd_sum and stats.ce_sum == stats.ce_sum and math.isfinite(stats.grad_norm)
    offload = ", cpuOffload" if cpu_offload else ""
    return _check(
        f"one FSDP2 training step on {backend}{offload}, world size 1",
        changed and finite and cpu_and_device,
        f"loss finite: {finite}, weights changed: {changed}, grad norm {stats.grad_norm:.3g}",
        seconds,
    )


def packing_rows(device: torch.device, scratch: Path, repeats: int) -> list[dict]:
    """Padded against packed micro-batches of the same samples: equal losses, then a step's time each."""
    import random

    from kubedistill.runtime.data.batching import shard_micro_batches
    from kubedistill.runtime.data.sample import Sample
    from kubedistill.runtime.demo.tiny import TinyShape
    from kubedistill.runtime.student.batch import MicroBatch

    cuda = device.type == "cuda"
    # On the GPU a ~100M-parameter student and sequences up to 4096 tokens; on CPU what checks the script.
    shape = TinyShape(1024, 2816, 8, 16, 8, 64, False) if cuda else None
    count, median, longest, budget, micro = (64, 512, 4096, 16384, 8) if cuda else (8, 24, 96, 256, 4)
    path = _tiny_student(scratch, "packing-student", shape)
    job = _job(
        "gpu-check-packing",
        {"model": str(path)},
        {"globalBatchSize": count, "precision": "bf16" if cuda else "fp32"},
    )
    rng = random.Random(0)
    lengths = [min(longest, max(8, round(rng.lognormvariate(math.log(median), 0.9)))) for _ in range(count)]
    tokens = np.random.default_rng(0).integers(3, 300, size=sum(lengths), dtype=np.int32)
    starts = np.cumsum([0, *lengths])
    samples = [
        Sample(
            input_ids=tokens[start : start + n],
            target_mask=np.arange(n) >= n // 4,
            source="gpu-check",
            prompt_length=n // 4,
        )
        for start, n in zip(starts, lengths, strict=False)
    ]
    worker = _one_rank(job, total_steps=10**6)
    width = worker.module.teacher_head.shape[1]
    plans = {}
    for packed in (False, True):
        (shard,) = shard_micro_batches(samples, 1, micro, budget if packed else None, packed)
        batches = [MicroBatch.from_samples(batch, 0, packed=packed) for batch in shard]
        generator = torch.Generator().manual_seed(1)
        # The same teacher states for both: each sample's rows in sample order, cut per micro-batch.
        states = {id(s): torch.randn(s.num_targets, width, generator=generator) for s in samples}
        hidden = [
            torch.cat([states[id(s)] for s in batch]).to(device, worker.module.teacher_head.dtype)
            for batch in shard
        ]
        plans["packed" if packed else "padded"] = (batches, hidden)
    normalizer = sum(s.num_targets for s in samples)
    sums = {name: worker.evaluate(batches, hidden, normalizer) for name, (batches, hidden) in plans.items()}
    padded_sum, packed_sum = (sums[name].kd_sum + sums[name].ce_sum for name in ("padded", "packed"))
    tolerance = 2e-2 if cuda else 1e-4
    equal = abs(packed_sum - padded_sum) <= tolerance * abs(padded_sum)
    seconds: dict[str, list[float]] = {name: [] for name in plans}
    # A first, untimed round on the GPU (kernels picked, memory pooled); on CPU one round checks the script.
    for _ in range(repeats + 1 if cuda else 1):
        for name, (batches, hidden) in plans.items():
            _sync(device)
            started = time.perf_counter()
            worker.train_step(batches, hidden, normalizer)
            _sync(device)
            seconds[name].append(time.perf_counter() - started)
    worker.close()
    real = sum(lengths)
    rows = []
    for name, (batches, _) in plans.items():
        step = statistics.median(seconds[name][1:] if cuda else seconds[name])
        slots = sum(b.num_slots for b in batches)
        rows.append(
            _check(
                f"{name} micro-batches, {count} sequences of {min(lengths)}-{max(lengths)} tokens",
                equal,
                f"{len(batches)} micro-batches, padding {1 - real / slots:.0%}, "
                f"{real / step:.0f} real tokens/s; loss sums packed {packed_sum:.6g} padded {padded_sum:.6g}",
                step,
            )
        )
    return rows


def hidden_state_rows(device: torch.device, n: int, d: int, repeats: int) -> list[dict]:
    """SGLang's list path and ours for one n-token prefill, from the device's bf16 states to the decoded
    tensor, with SGLang's scheduler method and our replacement called as its prefill loop calls them."""
    from bench.sglang_hop import decode_once, sglang_tolist
    from kubedistill.runtime.engines.sglang.hidden_states import shared_memory_method
    from kubedistill.runtime.teacher.backend import TeacherBatch

    hidden = torch.randn(n, d, generator=torch.Generator().manual_seed(0)).to(device, torch.bfloat16)
    batch = TeacherBatch(sequences=[[0] * n], positions=[list(range(n))])
    totals = {}
    for path, method in {
        "list": sglang_tolist,
        "shared memory": shared_memory_method(sglang_tolist, lambda: 0),
    }.items():
        decode_once(method, hidden, batch)
        totals[path] = statistics.median(sum(decode_once(method, hidden, batch)) for _ in range(repeats))
    return [
        _check(
            f"SGLang teacher hidden states, {path} path, {n} x {d} bf16",
            True,
            "rows equal to the scheduler's"
            + ("" if path == "list" else f"; {totals['list'] / totals[path]:.1f}x faster than the list path"),
            seconds,
        )
        for path, seconds in totals.items()
    ]


def _tiny_student(scratch: Path, name: str = "student", shape: "TinyShape | None" = None) -> Path:
    """The demo's student (or one of `shape`) on the demo chats' tokenizer, saved once under `name`."""
    from kubedistill.runtime.demo.data import chat_records
    from kubedistill.runtime.demo.tiny import STUDENT_SHAPE, build_tokenizer, save_tiny

    if (scratch / name / "config.json").is_file():
        return scratch / name
    texts = [" ".join(m["content"] for m in r["messages"]) for r in chat_records(200, 0)]
    return save_tiny(scratch / name, build_tokenizer(texts, 300), shape or STUDENT_SHAPE)


def _job(name: str, student: dict, training: dict, cluster: dict | None = None) -> "DistillationJob":
    """A self-distillation job around one student, as the rows' workers read it (no data is read)."""
    from kubedistill.api import parse_job

    spec = {
        "mode": "selfDistillation",
        "teacher": {"backend": "transformers"},
        "student": student,
        "data": {"train": {"path": "unused.jsonl"}},
        "training": training,
    }
    if cluster is not None:
        spec["cluster"] = cluster
    return parse_job(
        {
            "apiVersion": "kubedistill.io/v1alpha1",
            "kind": "DistillationJob",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def _one_rank(job: "DistillationJob", total_steps: int) -> "StudentWorker":
    """The job's student as one FSDP2 rank in this process, on a free loopback port."""
    from kubedistill.runtime.student.worker import RankAddress, StudentWorker

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return StudentWorker(job, RankAddress(0, 1, "127.0.0.1", port), total_steps=total_steps)


def kernel_rows(device: torch.device, scratch: Path) -> list[dict]:
    """Each kernel's logits against sdpa's on the same bf16 weights; installed or not."""
    import importlib.util

    from kubedistill.api.spec import Attention
    from kubedistill.runtime.models.loading import load_causal_lm
    from kubedistill.runtime.trainer.preflight import KERNEL_PACKAGES

    path = str(_tiny_student(scratch))
    tokens = torch.randint(5, 250, (2, 256), generator=torch.Generator().manual_seed(0)).to(device)
    reference = load_causal_lm(path, torch.bfloat16).to(device).eval()
    with torch.no_grad():
        expected = reference(tokens).logits.float()
    cases: list[tuple[str, Attention, bool, str | None]] = [
        (f"attention {kernel}", kernel, False, KERNEL_PACKAGES.get(kernel, (None,))[0])
        for kernel in (Attention.FLASH_ATTENTION_2, Attention.FLASH_ATTENTION_3, Attention.FLEX_ATTENTION)
    ]
    cases.append(("Liger kernels (RMSNorm, RoPE, SwiGLU)", Attention.SDPA, True, "liger_kernel"))
    rows = []
    for name, kernel, liger, module in cases:
        if module is not None and importlib.util.find_spec(module) is None:
            rows.append(_check(f"student {name} == sdpa", True, f"{module} not installed here: not run"))
            continue
        model = load_causal_lm(path, torch.bfloat16, kernel, liger).to(device).eval()
        _sync(device)
        started = time.perf_counter()
        with torch.no_grad():
            logits = model(tokens).logits.float()
        _sync(device)
        difference = float((logits - expected).abs().max())
        rows.append(
            _check(
                f"student {name} == sdpa, bf16",
                difference < 5e-2,
                f"max abs diff of the logits {difference:.3g}",
                time.perf_counter() - started,
            )
        )
    return rows


def context_parallel_row(device: torch.device, scratch: Path, backend: str = "nccl") -> dict:
    """A context-parallel step (spec.student.contextParallel 2: the sequence cut over two ranks, keys and
    values gathered) against the unsplit step of the same two ranks: loss and gradients. Two ranks of NCCL
    need two GPUs; with fewer the row says so. `backend` gloo runs it on the CPU, to check the row itself."""
    from torch.multiprocessing.spawn import spawn

    check = "context-parallel step (2 ranks) == unsplit step: loss, gradients"
    if backend == "nccl" and torch.cuda.device_count() < 2:
        return _check(check, True, f"needs 2 GPUs, this machine has {torch.cuda.device_count()}: not run")
    path = _tiny_student(scratch)
    started = time.perf_counter()
    spawn(_context_parallel_rank, args=(device.type, backend, str(path), str(scratch)), nprocs=2, join=True)
    seconds = time.perf_counter() - started
    (loss, gradients), (split_loss, split_gradients) = torch.load(scratch / "context-parallel.pt")
    loss_difference = abs(split_loss - loss) / max(abs(loss), 1e-12)
    gradient_difference = max(
        float((split_gradients[name] - gradient).abs().max() / gradient.abs().max().clamp_min(1e-12))
        for name, gradient in gradients.items()
    )
    # fp32 weights, tf32 off: only the order of the sums differs (the gathered keys, the split loss).
    ok = loss > 0 and loss_difference < 1e-4 and gradient_difference < 1e-3 and len(gradients) >= 10
    detail = (
        f"loss {loss:.6g}, relative difference {loss_difference:.2g}; largest gradient difference "
        f"{gradient_difference:.2g} of the largest element, {len(gradients)} parameters"
    )
    return _check(check, ok, detail, seconds)


def _context_parallel_rank(rank: int, device_type: str, backend: str, path: str, scratch: str) -> None:
    import torch.distributed as dist

    from kubedistill.runtime.data.sample import Sample
    from kubedistill.runtime.student.batch import MicroBatch
    from kubedistill.runtime.student.context_parallel import rank_share
    from kubedistill.runtime.student.module import build_module

    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"file://{scratch}/cp-store", rank=rank, world_size=2)
    generator = torch.Generator().manual_seed(0)
    lengths = (384, 256, 300)
    samples = [
        Sample(
            input_ids=torch.randint(5, 250, (n,), generator=generator).numpy(),
            target_mask=np.arange(n) >= n // 4,
            source="gpu-check",
            prompt_length=n // 4,
        )
        for n in lengths
    ]
    batch = MicroBatch.from_samples(samples, pad_id=0)
    results = []
    hidden: torch.Tensor | None = None
    for context in (1, 2):
        job = _job(
            "gpu-check",
            {"model": path, "replicas": 2, "contextParallel": context},
            {"globalBatchSize": 2, "microBatchSize": 1, "precision": "fp32"},
        )
        module = build_module(job, device, 2)
        assert module.teacher_head is not None
        if hidden is None:  # the same teacher states for both steps
            hidden = torch.randn(batch.num_targets, module.teacher_head.shape[1], generator=generator).to(
                device
            )
        share, share_hidden = (
            (batch, hidden)
            if module.context_group is None
            else rank_share(batch, hidden, module.context_group)
        )
        loss = module(share, share_hidden, float(batch.num_targets)).loss.loss
        # As the worker: FSDP2 averages the ranks' gradients. Unsplit, both ranks run the whole micro-batch.
        (loss * (2 if module.context_group is not None else 1)).backward()
        total = loss.detach().clone()
        if module.context_group is not None:
            dist.all_reduce(total)
        gradients = {
            name: p.grad.full_tensor().float().cpu()  # type: ignore[union-attr]
            for name, p in module.named_parameters()
            if p.grad is not None
        }
        results.append((float(total), gradients))
    if rank == 0:
        torch.save(results, Path(scratch) / "context-parallel.pt")
    dist.destroy_process_group()


def offload_row(device: torch.device, scratch: Path) -> dict:
    """A colocated engine's turn on a trained rank: what `student_offload` moves, measured on the device."""
    from kubedistill.runtime.data.sample import Sample
    from kubedistill.runtime.student.batch import MicroBatch
    from kubedistill.runtime.trainer.colocation import student_offload

    job = _job(
        "gpu-check-offload",
        {"model": str(_tiny_student(scratch)), "reshardAfterForward": "never"},
        {"globalBatchSize": 4, "learningRate": 1e-3, "precision": "bf16"},
        cluster={"colocate": True},
    )
    worker = _one_rank(job, total_steps=2)
    sample = Sample(
        input_ids=np.arange(5, 37), target_mask=np.arange(32) >= 16, source="gpu-check", prompt_length=16
    )
    batch = MicroBatch.from_samples([sample] * 4, pad_id=0)
    head = worker.module.teacher_head
    hidden = [torch.randn(batch.num_targets, head.shape[1], device=device, dtype=head.dtype)]
    worker.train_step([batch], hidden, batch.num_targets)
    parts = student_offload(job.spec.student.cpu_offload)
    _sync(device)
    held = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    worker.move_training_state("cpu", parts)
    away = torch.cuda.memory_allocated(device)
    worker.move_training_state("device", parts)
    seconds = time.perf_counter() - started
    stats = worker.train_step([batch], hidden, batch.num_targets)
    worker.close()
    finite = math.isfinite(stats.grad_norm) and stats.kd_sum == stats.kd_sum
    return _check(
        f"colocated turn: {', '.join(sorted(parts))} leave the GPU and come back",
        away < held and finite,
        f"{held / 2**20:.1f} MiB held, {away / 2**20:.1f} MiB during the turn; next step finite: {finite}",
        seconds,
    )


def run_checks(
    device: torch.device,
    tokens: list[int],
    d: int,
    v: int,
    losses: list[str],
    repeats: int,
    decode_tokens: int,
) -> list[dict]:
    rows = loss_rows(device, tokens, d, v, losses, repeats)
    with tempfile.TemporaryDirectory() as scratch:
        rows.append(teacher_row(device, Path(scratch)))
        # FSDP2's CPUOffloadPolicy needs an accelerator ("Cannot access accelerator device").
        offloads = (False, True) if device.type == "cuda" else (False,)
        rows.extend(fsdp_row(device, Path(scratch), cpu_offload) for cpu_offload in offloads)
        if device.type == "cuda":
            rows.extend(kernel_rows(device, Path(scratch)))
            rows.append(offload_row(device, Path(scratch)))
            rows.append(context_parallel_row(device, Path(scratch)))
        rows.extend(packing_rows(device, Path(scratch), repeats))
    rows.extend(hidden_state_rows(device, decode_tokens, d, repeats))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--d", type=int, default=2560)
    parser.add_argument("--v", type=int, default=151936)
    parser.add_argument("--losses", nargs="+", default=["fkl", "jsd"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=4096, help="prefill length of check 4")
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
        "repeats": args.repeats,
    }
    rows = run_checks(device, args.n, args.d, args.v, args.losses, args.repeats, args.decode_tokens)
    report(
        "gpu_check",
        "The torch path on the device (seconds: median; extra_gib: peak beyond inputs)",
        rows,
        settings,
    )
    if not all(row["ok"] for row in rows):
        sys.exit("a check failed")


if __name__ == "__main__":
    main()
