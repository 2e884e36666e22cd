"""The local generation examples as `make test` runs them: their settings, over the tiny world."""

from pathlib import Path
from typing import Any

import yaml

from kubedistill.runtime.demo.data import chat_records, write_jsonl
from tests.runtime.conftest import ONE_RANK

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "local"


def example_manifest(name: str, paths: dict[str, Path], **generation: Any) -> dict[str, Any]:
    """examples/local/<name>.yaml with its demo-output paths replaced (`paths`: demo path -> here) and
    `generation` merged into spec.generation (the endpoint's fields under `endpoint`), on one student rank
    (`ONE_RANK`: these tests are about the generation phase; the trainer's own tests shard the student)."""
    text = (EXAMPLES / f"{name}.yaml").read_text(encoding="utf-8")
    for demo, here in paths.items():
        text = text.replace(demo, str(here))
    manifest = yaml.safe_load(text)
    spec = manifest["spec"]
    spec["student"] |= ONE_RANK
    endpoint = generation.pop("endpoint", None)
    spec["generation"] = {**spec["generation"], **generation}
    if endpoint:
        spec["generation"]["endpoint"] = {**spec["generation"]["endpoint"], **endpoint}
    return manifest


def write_manifest(path: Path, manifest: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    return path


def distinct_prompts(path: Path, count: int) -> Path:
    """`count` chats of the tiny task with distinct questions (the examples' global batch is 16)."""
    records, seen = [], set()
    for record in chat_records(200, seed=5):
        question = record["messages"][0]["content"]
        if question not in seen:
            seen.add(question)
            records.append(record)
    assert len(records) >= count
    return write_jsonl(path, records[:count])
