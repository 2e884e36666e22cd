"""Several teachers (spec.teachers) end to end: each teacher its own engines, taking turns on the students'
devices, the students learning from their mixture; what a checkpoint records of them; teachers of two
vocabularies refused before anything starts. The mixture's arithmetic is tested in float64 in
tests/runtime/losses/test_mixture.py."""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from kubedistill.api import parse_job
from kubedistill.api.job import SpecError
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.demo.tiny import TinyShape, build_tokenizer, save_tiny
from kubedistill.runtime.models.loading import load_tokenizer
from kubedistill.runtime.teacher.several import check_one_vocabulary
from kubedistill.runtime.trainer.controller import RunOptions, Trainer
from kubedistill.runtime.trainer.preflight import check_models
from kubedistill.runtime.trainer.resume import Origin, changes, origin_of
from tests.api.manifests import BASE, SEVERAL_TEACHERS, TEACHERS, apply_changes
from tests.runtime.conftest import ONE_RANK, TEACHER, TinyWorld, job_manifest

OTHER_TEACHER = TinyShape(
    hidden_size=40, intermediate_size=80, num_hidden_layers=1, tie_word_embeddings=False
)
"""A second teacher of another width (and depth) on the tiny world's tokenizer."""


def two_teachers(tiny: TinyWorld, other: Path) -> list[dict[str, Any]]:
    return [
        {"model": str(tiny.teacher), "backend": "transformers", "weight": 3},
        {"model": str(other), "backend": "transformers"},
    ]


@pytest.fixture(scope="module")
def other_teacher(tiny: TinyWorld) -> Path:
    return save_tiny(tiny.root / "other-teacher", load_tokenizer(str(tiny.teacher)), OTHER_TEACHER, seed=5)


@pytest.mark.usefixtures("ray_session")
def test_two_teachers_each_on_its_own_engines_teach_the_student_their_mixture(
    tiny: TinyWorld, other_teacher: Path, tmp_path: Path
) -> None:
    """Colocated with the student: each teacher's engines take their own turns on its devices (they start
    asleep and refuse work while asleep, so the run completes only if each is asked in its turns), the first
    scoring both steps in one wake, the second a step a wake."""
    first, second = two_teachers(tiny, other_teacher)
    manifest = job_manifest(
        tiny,
        "two-teachers",
        teacher=None,
        teachers=[{**first, "stepsPerWake": 2}, second],
        student=ONE_RANK,
        data={"eval": {"path": str(tiny.eval)}},
        training={"maxSteps": 2, "evalEverySteps": 2},
        cluster={"colocate": True},
    )
    options = RunOptions(output_dir=tmp_path, metrics_port=0, progress=False, print_summary=False)
    trainer = Trainer(parse_job(manifest), options)
    run = trainer.run()
    # Steps 1 and 2: one wake of teacher-0, two of teacher-1; then one each for the exported student's eval.
    assert run.summary["wakes"] == {"teacher-0": 2, "teacher-1": 3}

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    (evaluation,) = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["kd_loss"] > 0.0 for r in train)
    # Both teachers' fp32 hidden states reach the students side by side, one object per micro-batch.
    width = TEACHER.hidden_size + OTHER_TEACHER.hidden_size
    assert all(r["transfer_bytes"] > 0 and r["transfer_bytes"] % (width * 4) == 0 for r in train)
    assert 0.0 <= evaluation["eval_teacher_agreement"] <= 1.0
    # The last eval scored the exported student: recomputed here from the three models' full logits and the
    # mixture written out (3/4 and 1/4), its divergence is the one the job measured.
    expected = eval_divergence_from_the_mixture(
        trainer.eval, tmp_path, [tiny.teacher, other_teacher], [0.75, 0.25]
    )
    assert evaluation["eval_kd_divergence"] == pytest.approx(expected, rel=1e-4)


def eval_divergence_from_the_mixture(
    samples: list[Sample], student: Path, teachers: list[Path], weights: list[float]
) -> float:
    """Mean fkl(m || q) over the samples' loss positions, m = sum_t w_t softmax(teacher t's logits)."""
    models = [
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32) for path in [student, *teachers]
    ]
    total, targets = 0.0, 0
    with torch.no_grad():
        for sample in samples:
            ids = torch.as_tensor(sample.input_ids).unsqueeze(0)
            positions = list(sample.loss_positions())
            student_logits, *teacher_logits = [model(ids).logits[0, positions] for model in models]
            vocab = min(logits.shape[-1] for logits in [student_logits, *teacher_logits])
            mixture = sum(
                w * F.softmax(z[:, :vocab], dim=-1) for w, z in zip(weights, teacher_logits, strict=True)
            )
            assert isinstance(mixture, torch.Tensor)
            log_q = F.log_softmax(student_logits[:, :vocab], dim=-1)
            total += float((mixture * (mixture.log() - log_q)).sum())
            targets += len(positions)
    return total / targets


def test_a_checkpoint_records_every_teacher_and_its_weight() -> None:
    several = parse_job(apply_changes(BASE, SEVERAL_TEACHERS))
    reweighted = parse_job(
        apply_changes(
            BASE, {**SEVERAL_TEACHERS, "spec.teachers": [TEACHERS[0], {**TEACHERS[1], "weight": 2}]}
        )
    )
    saved = Origin.from_json(origin_of(several, []).to_json())
    assert changes(saved, origin_of(several, [])) == []
    (found,) = changes(saved, origin_of(reweighted, []))
    assert found.startswith("spec.teachers [") and '"weight": 2' in found
    one_teacher = changes(saved, origin_of(parse_job(BASE), []))
    assert any(change.startswith("spec.teachers [") for change in one_teacher)
    assert any(change.startswith("spec.teacher.model ") for change in one_teacher)


def test_teachers_of_another_vocabulary_are_refused_naming_the_teacher(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    tokenizer = build_tokenizer(["a few words of another corpus", "and some more of them"], vocab_size=300)
    other = save_tiny(tmp_path / "other-vocabulary", tokenizer, OTHER_TEACHER)
    job = parse_job(job_manifest(tiny, "two-vocabularies", teacher=None, teachers=two_teachers(tiny, other)))
    with pytest.raises(SpecError) as refused:
        check_one_vocabulary(job)
    assert refused.value.field == "spec.teachers[1].model"
    assert "one vocabulary" in refused.value.message


def test_a_missing_teacher_model_is_one_line_naming_that_teacher(tiny: TinyWorld, tmp_path: Path) -> None:
    teachers = [{"model": str(tiny.teacher)}, {"model": str(tmp_path / "nowhere")}]
    job = parse_job(job_manifest(tiny, "a-missing-teacher", teacher=None, teachers=teachers))
    (problem,) = check_models(job)
    assert problem.startswith("spec.teachers[1].model: ")
