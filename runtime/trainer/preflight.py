"""Mistakes in a job's surroundings, caught before Ray starts: each one a `field: problem` line.

A model path that does not exist, a Hub name with a typo, an output directory nobody may write, a busy port,
a RAY_ADDRESS where no cluster answers: each would otherwise surface minutes later as a traceback from deep
inside transformers, the checkpoint writer or Ray (or as a hang, retrying).
"""

import errno
import importlib.util
import os
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from kubedistill.api import telemetry
from kubedistill.api.generation import runs_teacher
from kubedistill.api.job import DistillationJob
from kubedistill.api.spec import Attention, Backend, DistillationJobSpec

HUB_TIMEOUT_SECONDS = 10.0
RAY_CONNECT_TIMEOUT_SECONDS = 10.0


class PreflightError(Exception):
    """One line for the user: the field (or setting) and what is wrong with it."""


def model_paths(job: DistillationJob) -> Iterator[tuple[str, str, str]]:
    """(field, path, what the path must hold) for every model and tokenizer the spec names (rollout engines
    serve the student's model; a teacher without a model of its own is the student's too)."""
    spec = job.spec
    yield "spec.student.model", spec.student.model, "config.json"
    if spec.student.tokenizer:
        yield "spec.student.tokenizer", spec.student.tokenizer, "tokenizer_config.json"
    if spec.teacher is not None and spec.teacher.model:
        yield "spec.teacher.model", spec.teacher.model, "config.json"
    if spec.teacher is not None and spec.teacher.tokenizer:
        yield "spec.teacher.tokenizer", spec.teacher.tokenizer, "tokenizer_config.json"
    for index, teacher in enumerate(spec.teachers or []):
        yield f"spec.teachers[{index}].model", teacher.model, "config.json"
        if teacher.tokenizer:
            yield f"spec.teachers[{index}].tokenizer", teacher.tokenizer, "tokenizer_config.json"


def check_surroundings(
    job: DistillationJob,
    output: Path,
    output_field: str,
    metrics_port: int | None,
    environ: Mapping[str, str],
) -> list[str]:
    """Every model path first (several may be wrong at once), then the first other problem."""
    problems = check_models(job) + check_kernels(job, environ)
    if problems:
        return problems
    try:
        check_writable(output, output_field)
        if job.spec.checkpoint.path:
            check_writable(Path(job.spec.checkpoint.path), "spec.checkpoint.path")
        asked_port = metrics_port_asked(metrics_port)
        if asked_port:
            what = "--metrics-port" if metrics_port is not None else telemetry.METRICS_PORT_ENV
            check_port_free(asked_port, what)
        if environ.get("RAY_ADDRESS"):
            check_ray_address(environ["RAY_ADDRESS"])
    except PreflightError as error:
        return [str(error)]
    # Each tracker's clients, credentials and server (an MLflow server that is down is a wrong URI or a
    # server not started, not something to retry for minutes once the actors are up).
    from kubedistill.runtime.trainer.tracking.opening import check_trackers

    return check_trackers(job.spec.tracking, output, environ, check_writable)


def check_models(job: DistillationJob) -> list[str]:
    problems = []
    for field, path, required in model_paths(job):
        problem = check_model_path(path, required)
        if problem:
            problems.append(f"{field}: {problem}")
    return problems


KERNEL_PACKAGES: dict[Attention, tuple[str, str]] = {
    Attention.FLASH_ATTENTION_2: ("flash_attn", "flash-attn"),
    Attention.FLASH_ATTENTION_3: ("flash_attn_interface", "flash-attn-3"),
}
"""The module transformers imports for a flash kernel, and the package that installs it (transformers 5.25
`utils/import_utils.py:1324-1355`, `is_flash_attn_2_available` / `is_flash_attn_3_available`: both also
need CUDA)."""

NO_SGLANG_ATTENTION = (Attention.FLASH_ATTENTION_2, Attention.EAGER)
"""Kernels SGLang has no `attention_backend` for (`runtime/engines/sglang/args.py`)."""


def check_kernels(job: DistillationJob, environ: Mapping[str, str]) -> list[str]:
    """The student's attention kernel and Liger kernels on the machine that trains: this one for a local
    run. Under a RAY_ADDRESS the driver runs in the head pod, which has the workers' image (its packages) but
    not their GPUs: only the packages are checked there."""
    student = job.spec.student
    if student.attention == Attention.SDPA and not student.liger_kernel:
        return []  # nothing to check, and torch stays unimported
    import torch

    cuda = None if environ.get("RAY_ADDRESS") else torch.cuda.is_available()
    return kernel_problems(job, cuda, lambda module: importlib.util.find_spec(module) is not None)


def kernel_problems(job: DistillationJob, cuda: bool | None, installed: Callable[[str], bool]) -> list[str]:
    """One line per kernel field that cannot run: `cuda` says whether the training machine has a CUDA GPU
    (None: unknown here), `installed` whether a module can be imported there."""
    spec = job.spec
    attention = spec.student.attention
    problems = []
    if attention in KERNEL_PACKAGES:
        module, package = KERNEL_PACKAGES[attention]
        if cuda is False:
            problems.append(
                f"spec.student.attention: {attention} runs on CUDA GPUs only, and this machine has none; "
                "choose sdpa, eager or flex_attention"
            )
        elif not installed(module):
            problems.append(
                f"spec.student.attention: {attention} needs the {package} package, which is not installed "
                f"here (pip install {package}); or choose sdpa"
            )
    elif attention == Attention.FLEX_ATTENTION and cuda is False:
        # torch 2.11: "FlexAttention does not support backward on CPU", raised by any forward whose inputs
        # require gradients, which the student's do.
        problems.append(
            "spec.student.attention: flex_attention trains on CUDA GPUs only (torch's FlexAttention has no "
            "backward on the CPU), and this machine has none; choose sdpa or eager"
        )
    elif attention in NO_SGLANG_ATTENTION and cuda and installed("sglang") and _auto_engines(spec):
        problems.append(
            f"spec.student.attention: {attention} has no SGLang counterpart, and backend auto picks SGLang "
            "on this machine; choose sdpa, flash_attention_3 or flex_attention, or set the engines' backend "
            "to transformers"
        )
    if spec.student.liger_kernel:
        if cuda is False:
            problems.append(
                "spec.student.ligerKernel: Liger's kernels are Triton kernels for CUDA GPUs, and this "
                "machine has none; remove the field"
            )
        elif not installed("liger_kernel"):
            problems.append(
                "spec.student.ligerKernel: needs the liger-kernel package (the runtime image has it), which "
                "is not installed here (pip install liger-kernel)"
            )
    return problems


def _auto_engines(spec: DistillationJobSpec) -> bool:
    """Whether an engine of the job picks its backend where it runs (auto)."""
    teachers = [spec.teacher] if spec.teacher is not None else spec.teachers or []
    teacher = runs_teacher(spec) and any(one.backend == Backend.AUTO for one in teachers)
    rollout = spec.rollout is not None and spec.rollout.backend == Backend.AUTO
    return teacher or rollout


def check_model_path(path: str, required: str) -> str | None:
    """What is wrong with a local model directory or Hub id; None when it can be loaded."""
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / required).is_file():
            return f"'{path}' holds no {required}: not a Hugging Face model directory"
        return None
    if local.exists():
        return f"'{path}' is a file; a model is a directory (or a Hugging Face Hub id)"
    if _looks_local(path):
        return f"no such directory '{path}'"
    return _check_hub_id(path)


def _looks_local(path: str) -> bool:
    # Hub ids are `name` or `owner/name`; anything else can only mean a directory.
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path


def _check_hub_id(repo_id: str) -> str | None:
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        snapshot_download(repo_id, local_files_only=True)
        return None
    except HFValidationError:
        return f"no such directory '{repo_id}', nor a valid Hugging Face Hub id"
    except LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE:
        return (
            f"no such directory '{repo_id}', and no model of that name in the Hugging Face cache "
            "(HF_HUB_OFFLINE is set)"
        )
    try:
        # Asked once, without the retries a download makes: a typo should cost seconds, not a minute.
        HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_SECONDS)
    except GatedRepoError:
        return f"'{repo_id}' is gated on the Hugging Face Hub: accept its terms and set HF_TOKEN"
    except RepositoryNotFoundError:
        return f"no such directory '{repo_id}', nor a model of that name on the Hugging Face Hub"
    except Exception as error:  # any failure to reach the Hub reads the same to a user
        return (
            f"no such directory '{repo_id}', and the Hugging Face Hub could not be asked for it "
            f"({type(error).__name__}); set HF_HUB_OFFLINE=1 to use the local cache only"
        )
    return None


def check_writable(path: Path, field: str) -> None:
    """A file can be made in `path`, or in the nearest folder above it that exists (where the run will make
    it): tried with a temporary file, since permission bits say nothing to root or about read-only mounts.
    Nothing is left behind, so a job refused later for another reason leaves no empty folders."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise PreflightError(f"{field}: cannot write to '{path}': {error.strerror or error}") from None


def check_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Like the HTTP server that will bind it (socketserver sets SO_REUSEADDR): only a listener blocks.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            raise PreflightError(f"{what}: port {port} is busy ({error.strerror or error})") from None


def check_ray_address(address: str, timeout: float = RAY_CONNECT_TIMEOUT_SECONDS) -> None:
    """A cluster's address must answer: ray.init retries an unreachable GCS without end.

    `auto` (find the local cluster) and addresses without a port are left to Ray, which fails fast on them.
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise PreflightError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({reason} within {timeout:g} s); "
            "unset RAY_ADDRESS to start a local Ray"
        ) from None


def metrics_port_asked(option: int | None) -> int | None:
    """The /metrics port someone asked for (the option, else $KUBEDISTILL_METRICS_PORT); None: the default."""
    if option is not None:
        return option
    env = os.environ.get(telemetry.METRICS_PORT_ENV)
    return int(env) if env else None
