"""The real trackers, for the tracking tests: a `mlflow server` on loopback, and readers of what W&B (offline)
and TensorBoard wrote to disk, each with the tracker's own code where it has any."""

import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MLFLOW_START_SECONDS = 300.0
"""`mlflow server` creates its SQLite tables and imports FastAPI, Flask and SQLAlchemy: tens of seconds on
two busy cores."""


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    process: subprocess.Popen[bytes]
    log: Path


def start_mlflow(root: Path) -> MlflowServer:
    """A real tracking server on a free loopback port, SQLite behind it, artifacts served from `root`; it
    boots while the caller goes on (`wait_for_mlflow`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = root / "mlflow-server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    environ = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as stream:
        # A session of its own: the server's uvicorn worker goes with it, by its group's id.
        process = subprocess.Popen(
            command, stdout=stream, stderr=subprocess.STDOUT, env=environ, start_new_session=True
        )
    return MlflowServer(f"http://127.0.0.1:{port}", process, log)


def wait_for_mlflow(server: MlflowServer) -> str:
    """The server's URI, once its `/health` answers."""
    deadline = time.monotonic() + MLFLOW_START_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited {server.process.returncode}: {server.log.read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2):
                return server.uri
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(
        f"mlflow server did not answer within {MLFLOW_START_SECONDS:g} s: {server.log.read_text()[-2000:]}"
    )


def stop_mlflow(server: MlflowServer) -> None:
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


def wandb_records(run_file: Path) -> Iterator[Any]:
    """The protobuf records of a W&B transaction log (`run-<id>.wandb`), decoded with wandb's own `Record`.

    wandb 0.31 keeps no Python reader of the file (the last, `wandb/sdk/internal/datastore.py`, went with the
    Python backend): this is its framing, leveldb's log format: a 7-byte file header (":W&B", magic,
    version), then 32 KiB blocks of records, each `crc32: u32, length: u16, type: u8` and data, a record
    split over blocks as FIRST, MIDDLE..., LAST; a block's tail shorter than a header is zero padding."""
    from wandb.proto import wandb_internal_pb2

    header, block = 7, 32768
    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is no W&B transaction log"
    index, pending = header, b""
    while index + header <= len(data):
        if block - index % block < header:
            index += block - index % block
            continue
        _, length, kind = struct.unpack("<IHB", data[index : index + header])
        index += header
        pending += data[index : index + length]
        index += length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(run_file: Path) -> list[dict[str, Any]]:
    """The rows `run.log` wrote, as {key: JSON text}."""
    rows = []
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            )
    return rows


def wandb_of_kind(run_file: Path, kind: str) -> list[Any]:
    """The records of one kind: `run` (its config), `summary`, `artifact`..."""
    return [getattr(r, kind) for r in wandb_records(run_file) if r.WhichOneof("record_type") == kind]


def tensorboard_events(log_dir: Path) -> Any:
    """TensorBoard's own reader over the folder, loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def tensorboard_text(accumulator: Any, tag: str) -> list[tuple[int, str]]:
    """The (step, text) of a text summary (`add_text` writes `<tag>/text_summary`)."""
    return [
        (event.step, event.tensor_proto.string_val[0].decode())
        for event in accumulator.Tensors(f"{tag}/text_summary")
    ]
