"""Mistakes in a job's surroundings, caught before Ray starts: each one a `field: problem` line.

A model path that does not exist, a Hub name with a typo, an output directory nobody may write, a busy port,
a RAY_ADDRESS where no cluster answers: each would otherwise surface minutes later as a traceback from deep
inside transformers, the checkpoint writer or Ray (or as a hang, retrying).
"""

import errno
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from kubedistill.api import telemetry
from kubedistill.api.job import DistillationJob

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


def check_surroundings(
    job: DistillationJob,
    output: Path,
    output_field: str,
    metrics_port: int | None,
    environ: Mapping[str, str],
) -> list[str]:
    """Every model path first (several may be wrong at once), then the first other problem."""
    problems = check_models(job)
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
    return []


def check_models(job: DistillationJob) -> list[str]:
    problems = []
    for field, path, required in model_paths(job):
        problem = check_model_path(path, required)
        if problem:
            problems.append(f"{field}: {problem}")
    return problems


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
