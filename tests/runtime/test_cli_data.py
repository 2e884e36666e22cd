"""`kubedistill run` on data as people keep it, in a process of its own as a user runs it: gzipped shards in
a folder, one dialogue too long for the job's limits. Nothing is lost without a word, and the exported
weights can be read by other users."""

import gzip
import json
from pathlib import Path

import yaml

from tests.runtime.conftest import TinyWorld, job_manifest
from tests.test_bad_inputs import kubedistill


def _dialogue(turns: int) -> dict:
    messages = [{"role": "system", "content": "You are a careful tutor."}]
    for turn in range(turns):
        messages += [
            {"role": "user", "content": f"What is {turn}+{turn}?"},
            {"role": "assistant", "content": "4"},
        ]
    return {"messages": messages}


def test_a_run_on_gzipped_shards_counts_and_names_the_record_it_shortened(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    lines = tiny.train.read_text().splitlines(keepends=True)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "train-0.jsonl.gz").write_bytes(gzip.compress("".join(lines[:48]).encode()))
    long_shard = "".join(lines[48:]) + json.dumps(_dialogue(20)) + "\n"
    (shards / "train-1.jsonl.gz").write_bytes(gzip.compress(long_shard.encode()))
    (shards / "README.md").write_text("Shards of the tiny task.\n")
    output = tmp_path / "out"
    manifest = job_manifest(
        tiny, "cli-data", data={"train": {"path": str(shards)}}, output={"path": str(output)}
    )
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(manifest), encoding="utf-8")

    done = kubedistill(["run", str(job), "--max-steps", "1", "--metrics-port", "0"], tmp_path)

    assert done.exit_code == 0, done.stderr
    assert (
        "spec.data.train: 1 of 97 records were shortened to fit spec.data.maxLength 64 / "
        "promptMaxLength 32; "
        f"the first: {shards}/train-1.jsonl.gz:49: dropped its "
    ) in done.stderr
    summary = json.loads((output / "summary.json").read_text())
    assert (summary["steps"], summary["truncated_records"]) == (1, 1)
    assert summary["truncated_record_sources"][0].startswith(f"{shards}/train-1.jsonl.gz:49: ")
    weights, config = (
        (output / name).stat().st_mode & 0o777 for name in ("model.safetensors", "config.json")
    )
    assert weights == config and weights & 0o044, f"model.safetensors is {weights:o}, config.json {config:o}"
