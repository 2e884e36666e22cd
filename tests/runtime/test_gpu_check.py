"""`make gpu-check` at small sizes on CPU: the script a lent GPU machine runs, checked here for itself."""

import torch

from bench.gpu_check import run_checks


def test_every_gpu_check_runs_and_passes_at_small_sizes_on_cpu() -> None:
    rows = run_checks(
        torch.device("cpu"), tokens=[64], d=32, v=96, losses=["fkl"], repeats=1, decode_tokens=128
    )
    failed = [row for row in rows if not row["ok"]]
    assert not failed, failed
    checks = [row["check"] for row in rows]
    assert checks[0] == "fused loss, fkl bf16 N=64, d=32, V=96"
    assert "transformers teacher: hidden states @ lm_head == logits" in checks
    # The cpuOffload step runs on CUDA only (FSDP2's offload policy needs an accelerator).
    assert [c for c in checks if c.startswith("one FSDP2")] == [
        "one FSDP2 training step on cpu:gloo, world size 1"
    ]
    assert [c.split(",")[0] for c in checks if "micro-batches" in c] == [
        "padded micro-batches",
        "packed micro-batches",
    ]
    assert [c for c in checks if c.startswith("SGLang teacher")] == [
        "SGLang teacher hidden states, list path, 128 x 32 bf16",
        "SGLang teacher hidden states, shared memory path, 128 x 32 bf16",
    ]
