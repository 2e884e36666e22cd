"""The kernel fields checked before Ray starts, on the machine that trains: one line each, naming the field.

What the installed command prints on this machine is in `tests/test_bad_inputs.py` (BAD_SETTINGS)."""

import pytest

from kubedistill.api import parse_job
from kubedistill.api.job import DistillationJob
from kubedistill.runtime.trainer.preflight import kernel_problems

BASE = {
    "apiVersion": "kubedistill.io/v1alpha1",
    "kind": "DistillationJob",
    "metadata": {"name": "kernels"},
    "spec": {
        "teacher": {"model": "/models/teacher"},
        "student": {"model": "/models/student"},
        "data": {"train": {"path": "/data/train.jsonl"}},
    },
}


def _job(**student: object) -> DistillationJob:
    return parse_job({**BASE, "spec": {**BASE["spec"], "student": {"model": "/models/student", **student}}})


def _installed(*modules: str):
    return lambda module: module in modules


@pytest.mark.parametrize(
    ("student", "cuda", "installed", "line"),
    [
        (
            {"attention": "flash_attention_2"},
            False,
            ("flash_attn",),
            "spec.student.attention: flash_attention_2 runs on CUDA GPUs only, and this machine has none",
        ),
        (
            {"attention": "flash_attention_2"},
            True,
            (),
            "spec.student.attention: flash_attention_2 needs the flash-attn package, which is not installed",
        ),
        (
            {"attention": "flash_attention_3"},
            None,
            (),
            "spec.student.attention: flash_attention_3 needs the flash-attn-3 package, which is not",
        ),
        (
            {"attention": "eager"},
            True,
            ("sglang",),
            "spec.student.attention: eager has no SGLang counterpart, and backend auto picks SGLang",
        ),
        (
            {"attention": "flex_attention"},
            False,
            (),
            "spec.student.attention: flex_attention trains on CUDA GPUs only",
        ),
        (
            {"ligerKernel": True},
            False,
            ("liger_kernel",),
            "spec.student.ligerKernel: Liger's kernels are Triton kernels for CUDA GPUs, and this machine",
        ),
        (
            {"ligerKernel": True},
            True,
            (),
            "spec.student.ligerKernel: needs the liger-kernel package",
        ),
    ],
    ids=[
        "fa2-on-cpu",
        "fa2-not-installed",
        "fa3-on-a-cluster",
        "eager-with-sglang",
        "flex-on-cpu",
        "liger-on-cpu",
        "no-liger",
    ],
)
def test_a_kernel_that_cannot_run_is_one_line_naming_its_field(
    student: dict[str, object], cuda: bool | None, installed: tuple[str, ...], line: str
) -> None:
    (problem,) = kernel_problems(_job(**student), cuda, _installed(*installed))
    assert problem.startswith(line)


@pytest.mark.parametrize(
    ("student", "cuda", "installed"),
    [
        ({"attention": "flash_attention_2"}, True, ("flash_attn",)),
        ({"attention": "flash_attention_3"}, True, ("flash_attn_interface",)),
        # A cluster's GPUs are not the driver's: only its packages (the workers' image) are checked.
        ({"attention": "flash_attention_2", "ligerKernel": True}, None, ("flash_attn", "liger_kernel")),
        ({"attention": "eager"}, True, ()),
        ({"attention": "eager"}, False, ("sglang",)),
        ({"attention": "flex_attention"}, True, ()),
        ({"ligerKernel": True}, True, ("liger_kernel",)),
    ],
)
def test_a_kernel_that_can_run_passes(
    student: dict[str, object], cuda: bool | None, installed: tuple[str, ...]
) -> None:
    assert kernel_problems(_job(**student), cuda, _installed(*installed)) == []
