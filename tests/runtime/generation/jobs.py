"""Jobs that generate their training data, over a small prompt file."""

from pathlib import Path
from typing import Any

from kubedistill.api import parse_job
from kubedistill.api.job import DistillationJob
from kubedistill.runtime.demo.data import write_jsonl


def prompt_file(path: Path, prompts: list[str]) -> Path:
    """Chat records whose last user turn is each prompt (one with an old answer the teacher replaces)."""
    records: list[dict[str, Any]] = []
    for i, prompt in enumerate(prompts):
        messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": prompt}]
        if i == 0:
            messages.append({"role": "assistant", "content": "an old answer"})
        records.append({"messages": messages})
    return write_jsonl(path, records)


def endpoint_job(
    train: Path, base_url: str, student: str = "/models/student", **generation: Any
) -> DistillationJob:
    endpoint = {"baseUrl": base_url, "model": "scripted", "apiKey": {"env": "TEST_API_KEY"}}
    endpoint.update(generation.pop("endpoint", {}))
    return parse_job(
        {
            "apiVersion": "kubedistill.io/v1alpha1",
            "kind": "DistillationJob",
            "metadata": {"name": "from-endpoint"},
            "spec": {
                "mode": "sft",
                "generation": {"endpoint": endpoint, "maxNewTokens": 16, **generation},
                "student": {"model": student},
                "data": {"train": {"path": str(train)}, "maxLength": 64, "promptMaxLength": 32},
                "training": {"globalBatchSize": 2, "seed": 11},
            },
        }
    )
