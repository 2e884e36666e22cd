"""Mistakes in the generation's surroundings stop `kubedistill run` before anything starts or is sent: one
`FILE: field: problem` line, no traceback, nothing written."""

import socket
from pathlib import Path

import pytest

from kubedistill.runtime.demo.data import chat_records, write_jsonl
from tests.runtime.conftest import TinyWorld
from tests.runtime.generation.examples import example_manifest, write_manifest
from tests.test_bad_inputs import assert_rejected, invoke


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _job(tiny: TinyWorld, tmp_path: Path, **endpoint: object) -> Path:
    prompts = write_jsonl(tmp_path / "prompts.jsonl", chat_records(4, seed=0))
    paths = {
        "demo-output/assets/student-init": tiny.student,
        "demo-output/assets/data/student-train.jsonl": prompts,
        "demo-output/runs/generate-from-endpoint": tmp_path / "out",
    }
    manifest = example_manifest("generate-from-endpoint", paths, endpoint=endpoint)
    return write_manifest(tmp_path / "job.yaml", manifest)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (
            {"apiKey": {"env": "KD_TEST_UNSET_KEY"}},
            "spec.generation.endpoint.apiKey.env: the environment variable KD_TEST_UNSET_KEY (the API "
            "key) is not set; export KD_TEST_UNSET_KEY",
        ),
        (
            {"baseUrl": "http://127.0.0.1:{port}/v1"},
            "spec.generation.endpoint.baseUrl: nothing answers at 127.0.0.1:{port} (Connection refused",
        ),
    ],
    ids=["missing-api-key", "unreachable-endpoint"],
)
def test_a_missing_key_or_an_unreachable_endpoint_is_one_line_before_anything_starts(
    tiny: TinyWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: dict, expected: str
) -> None:
    monkeypatch.delenv("KD_TEST_UNSET_KEY", raising=False)
    port = _closed_port()
    if "baseUrl" in endpoint:
        endpoint = {"baseUrl": endpoint["baseUrl"].format(port=port)}
    file = _job(tiny, tmp_path, **endpoint)
    outcome = invoke(["run", str(file)])
    assert_rejected(outcome, file, expected.format(port=port))
    assert len(outcome.lines) == 1
    assert not (tmp_path / "out").exists()
