"""Fixtures shared by the runtime tests: one Ray for the session, tiny models and data on disk."""

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubedistill.runtime.demo.data import chat_records, write_jsonl
from kubedistill.runtime.demo.tiny import TinyShape, build_tokenizer, save_tiny

TEACHER = TinyShape(hidden_size=48, intermediate_size=96, num_hidden_layers=2, tie_word_embeddings=False)
STUDENT = TinyShape(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
)


@dataclass(frozen=True)
class TinyWorld:
    root: Path
    teacher: Path
    student: Path
    train: Path
    eval: Path


PLUGIN_SITE = Path(__file__).parent / "plugin_site"
"""A plugin package with entry points, importable by the driver and by every Ray worker."""


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Workers inherit the environment Ray starts with: the plugin package must be on their path too.
    sys.path.insert(0, str(PLUGIN_SITE))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGIN_SITE), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    root = tmp_path_factory.mktemp("tiny")
    train = chat_records(96, seed=0)
    held_out = chat_records(24, seed=1)
    texts = [" ".join(m["content"] for m in record["messages"]) for record in train + held_out]
    tokenizer = build_tokenizer(texts, vocab_size=320)
    return TinyWorld(
        root=root,
        teacher=save_tiny(root / "teacher", tokenizer, TEACHER, seed=0),
        student=save_tiny(root / "student", tokenizer, STUDENT, seed=1),
        train=write_jsonl(root / "train.jsonl", train),
        eval=write_jsonl(root / "eval.jsonl", held_out),
    )


def job_manifest(tiny: TinyWorld, name: str, **spec_changes: Any) -> dict[str, Any]:
    """A small off-policy job over the tiny world; `spec_changes` are merged into spec sections."""
    spec: dict[str, Any] = {
        "mode": "offPolicy",
        "teacher": {"model": str(tiny.teacher), "backend": "transformers"},
        "student": {"model": str(tiny.student), "replicas": 2, "gradientCheckpointing": False},
        "distillation": {"loss": "fkl", "kdRatio": 0.8},
        "data": {"train": {"path": str(tiny.train)}, "maxLength": 64, "promptMaxLength": 32},
        "training": {
            "epochs": 1,
            "globalBatchSize": 16,
            "microBatchSize": 4,
            "learningRate": 1.0e-2,
            "warmupRatio": 0.0,
            "precision": "fp32",
            "seed": 7,
        },
    }
    for section, value in spec_changes.items():
        if isinstance(value, dict) and isinstance(spec.get(section), dict):
            spec[section] = {**spec[section], **value}
        elif value is None:
            spec.pop(section, None)
        else:
            spec[section] = value
    return {
        "apiVersion": "kubedistill.io/v1alpha1",
        "kind": "DistillationJob",
        "metadata": {"name": name},
        "spec": spec,
    }


STRAIGHT_CHECKPOINTS = {"everySteps": 3}

ONE_RANK = {"replicas": 1}
"""`student` for a job whose subject is not the student's sharding. A rank is an actor: its start (torch,
transformers and FSDP2 imported, the model loaded) costs about 5 CPU-seconds, a job's largest cost on make
test's two cores. The jobs about ranks, resharding, checkpoints across ranks and a rank's death keep two
(`job_manifest`'s default), as do those compared with `straight_run`."""

TINY_ROLLOUT = {
    "engines": 1,
    "batchSize": 8,
    "samplesPerPrompt": 2,
    "maxNewTokens": 8,
    "backend": "transformers",
}
"""One transformers engine, 8 prompts x 2 samples a round: one step of the tiny jobs' global batch of 16."""
ON_POLICY = {"mode": "onPolicy", "rollout": TINY_ROLLOUT}


@pytest.fixture(scope="session")
def straight_run(tiny: TinyWorld, tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Path:
    """The reference run: 6 uninterrupted off-policy steps, checkpointed every 3. Resumed, recovered and
    re-sharded runs must end where it ends."""
    from kubedistill.api import parse_job
    from kubedistill.runtime.trainer.controller import RunOptions, Trainer

    output = tmp_path_factory.mktemp("straight")
    manifest = job_manifest(
        tiny, "trainer-test", checkpoint={"path": str(output / "ckpt"), **STRAIGHT_CHECKPOINTS}
    )
    Trainer(
        parse_job(manifest),
        RunOptions(output_dir=output, metrics_port=0, progress=False, print_summary=False),
    ).run()
    return output
