"""Cross-tokenizer jobs end to end with real parts: Ray actors, a transformers teacher whose tokenizer is not
the student's, FSDP2 student ranks on gloo (two for dskd, whose projectors are sharded), through the real
`Trainer`."""

import json
import logging
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from kubedistill.api import parse_job
from kubedistill.runtime.demo.tiny import build_tokenizer, save_tiny
from kubedistill.runtime.trainer.controller import RunOptions, Trainer
from tests.runtime.algorithms.conftest import TEACHER_VOCABULARY, demo_texts
from tests.runtime.conftest import ON_POLICY, ONE_RANK, TEACHER, TinyWorld, job_manifest

pytestmark = pytest.mark.usefixtures("ray_session")

STEPS = 4
TEACHER_HIDDEN = TEACHER.hidden_size


@pytest.fixture(scope="module")
def cross_world(tiny: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    """The tiny world with a teacher that has its own, coarser tokenizer."""
    tokenizer = build_tokenizer(demo_texts(), vocab_size=TEACHER_VOCABULARY)
    teacher = save_tiny(tmp_path_factory.mktemp("cross") / "teacher", tokenizer, TEACHER, seed=0)
    return TinyWorld(root=tiny.root, teacher=teacher, student=tiny.student, train=tiny.train, eval=tiny.eval)


def train(world: TinyWorld, output: Path, spec: dict | None = None, **distillation: object) -> list[dict]:
    manifest = job_manifest(
        world,
        "cross-tokenizer",
        distillation={"loss": "fkl", "kdRatio": 0.8, **distillation},
        checkpoint={"path": str(output / "checkpoints"), "everySteps": 1, "keep": STEPS},
        **(spec or {}),
    )
    options = RunOptions(
        output_dir=output, stop_after_steps=STEPS, metrics_port=0, progress=False, print_summary=False
    )
    Trainer(parse_job(manifest), options).run()
    lines = (output / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == "train"]


def assert_distils_from_its_own_tokens(records: list[dict]) -> None:
    assert len(records) == STEPS
    assert records[-1]["loss"] < records[0]["loss"], [r["loss"] for r in records]
    assert all(r["kd_loss"] > 0 for r in records)
    teacher_positions = [r["transfer_bytes"] // (TEACHER_HIDDEN * 4) for r in records]
    assert all(0 < t < r["targets"] for t, r in zip(teacher_positions, records, strict=True)), (
        "the coarser teacher tokenizer has fewer targets than the student's"
    )


def projectors(checkpoint: Path, scratch: Path) -> dict[str, torch.Tensor]:
    dcp_to_torch_save(checkpoint, scratch)
    model = torch.load(scratch, weights_only=False)["model"]
    return {name: value for name, value in model.items() if name.startswith("algorithm.")}


def test_simple_ctkd_distils_across_tokenizers_on_the_students_own_samples_with_uld(
    cross_world: TinyWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On-policy: each sampled response reaches the teacher as text in its own tokens (`data.retokenize`),
    and GOLD's hybrid ULD compares the two vocabularies. Off-policy cross-tokenizer data runs in the dskd
    job below."""
    with caplog.at_level(logging.INFO, logger="kubedistill.runtime.trainer.sources"):
        records = train(
            cross_world, tmp_path, {**ON_POLICY, "student": ONE_RANK}, algorithm="simpleCtkd", loss="uld"
        )
    assert_distils_from_its_own_tokens(records)
    counts = [r.getMessage() for r in caplog.records if "aligned exactly" in r.getMessage()]
    assert len(counts) == STEPS, "one round of rollouts a step, each reporting its alignment"


def test_dskd_distils_across_tokenizers_and_trains_its_projectors(
    cross_world: TinyWorld, tmp_path: Path
) -> None:
    """With KDFlow's pseudo-inverse projectors, set up from both heads before FSDP2 shards them: the
    student-to-teacher one is rebuilt each step (not learned), so checkpoints hold the other two alone.
    The learned student-to-teacher projector is checked against a float64 reference in test_dskd.py."""
    records = train(
        cross_world,
        tmp_path,
        algorithm="dskd",
        dskdTokenAlign="cma",
        dskdProjectorInit="pseudoInverse",
        topkVocab=200,
    )
    assert_distils_from_its_own_tokens(records)
    first = projectors(tmp_path / "checkpoints" / "step-00000001", tmp_path / "first.pt")
    last = projectors(tmp_path / "checkpoints" / f"step-{STEPS:08d}", tmp_path / "last.pt")
    assert sorted(first) == ["algorithm.query.weight", "algorithm.t2s.weight"]
    for name, value in first.items():
        assert not torch.equal(value, last[name]), f"{name} did not train"
