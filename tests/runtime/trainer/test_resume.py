"""What a checkpoint was made from, and which changes to a job it survives."""

import shutil
from datetime import datetime, timedelta, tzinfo
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from transformers.utils import chat_template_utils

from kubedistill.api import parse_job
from kubedistill.api.spec import DataSource, DataSpec, DistillationJobSpec, Mode
from kubedistill.runtime.data.load import load_samples
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.demo.tiny import build_tokenizer
from kubedistill.runtime.trainer import controller, resume
from kubedistill.runtime.trainer.checkpoints import Checkpoint, CheckpointDirectory, TrainerState
from kubedistill.runtime.trainer.controller import RunOptions, Trainer
from kubedistill.runtime.trainer.resume import (
    MAY_CHANGE,
    Origin,
    ResumeRefused,
    changes,
    check_resumable,
    check_start,
    data_identity,
    origin_of,
)
from tests.api.manifests import BASE, DELETE, MIXTURE, apply_changes
from tests.runtime.conftest import TinyWorld, job_manifest
from tests.runtime.data.builders import CORPUS, chat, write_jsonl

RECORDS = [
    Sample(input_ids=(1, 2, 3, 4), target_mask=(False, False, True, True), source="a:1", prompt_length=2),
    Sample(input_ids=(5, 6, 7), target_mask=(False, True, True), source="a:2", prompt_length=1),
]


def _origin(changes_: dict[str, Any] | None = None, records: list[Sample] = RECORDS) -> Origin:
    return origin_of(parse_job(apply_changes(BASE, changes_ or {})), records)


def _roundtrip(origin: Origin) -> Origin:
    """As a checkpoint keeps it: JSON on disk."""
    return Origin.from_json(origin.to_json())


@pytest.mark.parametrize(
    "change",
    [
        {"spec.training.maxSteps": 5},
        {"spec.training.epochs": 3},
        {"spec.training.evalEverySteps": 10, "spec.data.eval": {"path": "/data/eval.jsonl"}},
        {"spec.training.microBatchSize": 2},
        {"spec.checkpoint.everySteps": 7},
        {"spec.student.replicas": 4},
        {"spec.cluster.colocate": True},
        {"spec.student.ligerKernel": True},
        {"spec.student.attention": "eager"},
        {"spec.backoffLimit": 0},
        {"spec.preRunningDeadlineSeconds": 600},
        {"spec.data.train.path": "/elsewhere/train.jsonl"},
        # As long as the records read stay the same: a file of fewer records than maxSamples.
        {"spec.data.train.maxSamples": 1000},
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_field_that_may_change_leaves_the_job_resumable(change: dict[str, Any]) -> None:
    assert changes(_roundtrip(_origin()), _origin(change)) == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"spec.training.learningRate": 1.0e-5}, "spec.training.learningRate"),
        ({"spec.training.globalBatchSize": 64}, "spec.training.globalBatchSize"),
        ({"spec.student.model": "/models/other"}, "spec.student.model"),
        ({"spec.distillation.loss": "rkl"}, "spec.distillation.loss"),
        ({"spec.data.maxLength": 9000}, "spec.data.maxLength"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_field_that_shapes_the_model_is_named_old_to_new(change: dict[str, Any], named: str) -> None:
    (found,) = changes(_roundtrip(_origin()), _origin(change))
    assert found.startswith(f"{named} ")
    assert " -> " in found


def test_other_records_are_named_with_their_counts_and_the_moved_path() -> None:
    found = changes(
        _roundtrip(_origin()), _origin({"spec.data.train.path": "/new.jsonl"}, records=RECORDS[:1])
    )
    assert found[-1] == "training data 2 -> 1 records"
    assert any(change.startswith("spec.data.train.path ") for change in found)


def test_the_same_number_of_other_records_is_still_a_change() -> None:
    other = [RECORDS[0], Sample((5, 6, 8), (False, True, True), "a:2", 1)]
    assert changes(_roundtrip(_origin()), _origin(records=other)) == [
        "training data: other records (2 either way)"
    ]


def test_a_mixtures_sources_and_weights_are_what_a_checkpoint_was_made_from() -> None:
    """The weights decide which samples each step trains on: a resume with others would not go on the same."""
    mixed = {"spec.data.train": DELETE, "spec.data.mixture": MIXTURE}
    reweighted = {
        **mixed,
        "spec.data.mixture": [{**MIXTURE[0], "weight": 0.3}, {**MIXTURE[1], "weight": 0.7}],
    }
    assert changes(_roundtrip(_origin(mixed)), _origin(mixed)) == []
    (found,) = changes(_roundtrip(_origin(mixed)), _origin(reweighted))
    assert found.startswith("spec.data.mixture [") and '"weight": 0.3' in found
    assert changes(_roundtrip(_origin(mixed)), _origin(mixed, records=RECORDS[:1])) == [
        "training data 2 -> 1 records"
    ]


def test_data_identity_ignores_where_a_record_came_from() -> None:
    moved = [Sample(s.input_ids, s.target_mask, "b:9", s.prompt_length) for s in RECORDS]
    assert data_identity(moved) == data_identity(RECORDS)


def test_a_restart_compares_the_hash_its_prepared_set_keeps_as_checkpoints_always_recorded_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted job reads its samples' hash with the prepared set instead of hashing every token, and
    compares it with what any checkpoint recorded: the same records resume (moved, too, though the moved
    file's set is prepared afresh under a new key), other records are refused."""
    tokenizer = build_tokenizer(CORPUS, vocab_size=512)
    chats = [chat(("user", "What is 2+2?"), ("assistant", f"The answer is {n}.")) for n in range(4)]
    source = write_jsonl(tmp_path / "train.jsonl", chats)
    data, cache = DataSpec(train=source), tmp_path / "ckpt" / "prepared"
    job = parse_job(apply_changes(BASE, {"spec.data.train.path": source.path}))

    def restart(source: DataSource) -> Origin:
        loaded = load_samples(source, data, tokenizer, mode=Mode.OFF_POLICY, cache=cache)
        assert loaded.sha256 is not None, "the kept set holds its hash"
        return origin_of(job, loaded.samples, train_sha256=loaded.sha256)

    # A checkpoint as every version wrote it: the hash of the samples prepared without a cache.
    saved = _roundtrip(origin_of(job, load_samples(source, data, tokenizer, mode=Mode.OFF_POLICY).samples))
    restart(source)
    monkeypatch.setattr(resume, "samples_sha256", None)  # from here on, a hash computed would fail
    assert changes(saved, restart(source)) == []
    moved = write_jsonl(tmp_path / "elsewhere.jsonl", chats)
    assert changes(saved, restart(moved)) == []
    other = write_jsonl(tmp_path / "train.jsonl", [*chats[:3], chat(("user", "Hi"), ("assistant", "Hello"))])
    assert changes(saved, restart(other)) == ["training data: other records (4 either way)"]


def test_every_field_that_may_change_is_a_spec_field() -> None:
    """A typo in the list would let nothing through silently."""
    spec_fields = {"spec"}

    def walk(model: type, prefix: str) -> None:
        for name, info in model.model_fields.items():
            path = f"{prefix}.{info.alias or name}"
            spec_fields.add(path)
            for inner in getattr(info.annotation, "__args__", (info.annotation,)):
                if hasattr(inner, "model_fields"):
                    walk(inner, path)

    walk(DistillationJobSpec, "spec")
    assert set(MAY_CHANGE) <= spec_fields, set(MAY_CHANGE) - spec_fields


def test_the_readme_lists_every_field_that_may_change() -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text(encoding="utf-8")
    for field in MAY_CHANGE:
        name = field.removeprefix("spec.")
        assert f"`{name}`" in readme or f"`{name}.*`" in readme, name


def _checkpoint(origin: Origin, path: str = "/ckpt/step-00000004") -> Checkpoint:
    return Checkpoint(
        Path(path), TrainerState(step=4, epoch=0, batch_in_epoch=4), _roundtrip(origin).to_json()
    )


def _named(name: str, changes_: dict[str, Any] | None = None) -> Origin:
    return _origin({"metadata.name": name, **(changes_ or {})})


def test_a_checkpoint_of_another_job_is_refused_naming_both_jobs() -> None:
    """Two jobs given one spec.checkpoint.path, the same spec otherwise: neither goes on from the other's."""
    with pytest.raises(ResumeRefused) as refused:
        check_resumable(_checkpoint(_named("first")), _named("second"))
    assert str(refused.value).startswith(
        "spec.checkpoint.path: cannot resume from /ckpt/step-00000004 (step 4): it is a checkpoint of job "
        "first, not of this job second (the two jobs share the folder). To start this job from it: "
        "spec.checkpoint.resumeFrom: /ckpt/step-00000004"
    )


def test_a_checkpoint_of_the_same_job_resumes() -> None:
    check_resumable(_checkpoint(_named("first")), _named("first"))


def test_a_refusal_for_a_changed_job_points_to_resume_from_for_new_data() -> None:
    with pytest.raises(ResumeRefused) as refused:
        check_resumable(_checkpoint(_origin()), _origin({"spec.training.learningRate": 1.0e-5}))
    assert "spec.checkpoint.resumeFrom: /ckpt/step-00000004, with a new spec.checkpoint.path" in str(
        refused.value
    )


def test_resume_from_is_refused_where_nothing_is_found() -> None:
    with pytest.raises(ResumeRefused, match=r"^spec.checkpoint.resumeFrom: no checkpoint at '/nowhere' "):
        check_start(None, "/nowhere", _origin(), None)


def test_resume_from_inside_this_jobs_own_checkpoint_folder_is_refused() -> None:
    """This job's own checkpoints would land among those it starts from (and overwrite equal steps)."""
    start = _checkpoint(_named("first"), "/ckpt/step-00000004")
    with pytest.raises(ResumeRefused, match=r"^spec.checkpoint.resumeFrom: .* lies in spec.checkpoint.path"):
        check_start(start, "/ckpt", _named("second"), "/ckpt")
    assert check_start(start, "/ckpt", _named("second"), "/ckpt-second") == start


def test_resume_from_a_checkpoint_of_another_student_model_is_refused_naming_both() -> None:
    start = _checkpoint(_origin())
    with pytest.raises(ResumeRefused) as refused:
        check_start(start, "/ckpt", _origin({"spec.student.model": "/models/other"}), None)
    assert str(refused.value) == (
        'spec.checkpoint.resumeFrom: /ckpt/step-00000004 holds a student of "/models/Qwen3-4B", not '
        'spec.student.model "/models/other": a checkpoint gives its weights to the same model only'
    )


def test_resume_from_takes_another_jobs_checkpoint_with_other_data_and_settings() -> None:
    """Going on with new data is what resumeFrom is for: only the student model must be the same."""
    start = _checkpoint(_named("first"))
    changed = _origin({"metadata.name": "second", "spec.training.learningRate": 1.0e-5}, records=RECORDS[:1])
    assert check_start(start, "/ckpt", changed, "/ckpt-second") == start


class _Tomorrow(datetime):
    """The clock a day on: what a run after midnight reads."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> "_Tomorrow":
        today = datetime.now(tz)
        return cls.fromtimestamp(today.timestamp(), today.tzinfo) + timedelta(days=1)


@pytest.mark.parametrize(
    ("template", "date_format"), [("llama3_2.jinja", "Today Date: %d %b %Y"), ("gptoss.jinja", "%Y-%m-%d")]
)
def test_a_resume_the_next_day_renders_the_first_days_date_and_is_not_refused(
    tiny: TinyWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str, date_format: str
) -> None:
    """Llama 3.x and gpt-oss templates write today's date into every prompt: the job's first run records the
    moment its templates saw, and a run the next day renders the records as on the first day."""
    student = tmp_path / "student"
    shutil.copytree(tiny.student, student)
    (student / "chat_template.jinja").write_text((files("trl") / "chat_templates" / template).read_text())
    train = tmp_path / "train.jsonl"
    train.write_text("".join(tiny.train.read_text().splitlines(keepends=True)[:16]))
    checkpoints = tmp_path / "ckpt"
    manifest = job_manifest(
        tiny,
        "next-day",
        mode="sft",
        teacher=None,
        student={"model": str(student)},
        # One global batch of records; the templates' system prompts are long.
        data={"train": {"path": str(train)}, "maxLength": 2048, "promptMaxLength": 1024},
        checkpoint={"path": str(checkpoints)},
    )
    job = parse_job(manifest)
    options = RunOptions(output_dir=tmp_path / "out")
    first = Trainer(job, options)
    assert datetime.now().strftime(date_format) in first.tokenizer.decode(list(first.train[0].input_ids))
    directory = CheckpointDirectory(checkpoints, keep=1)
    directory.commit(
        directory.staging(2), TrainerState(step=2, epoch=0, batch_in_epoch=2), first.origin.to_json()
    )

    monkeypatch.setattr(chat_template_utils, "datetime", _Tomorrow)
    monkeypatch.setattr(controller, "datetime", _Tomorrow)
    fresh = Trainer(parse_job({**manifest, "spec": {**manifest["spec"], "checkpoint": {}}}), options)
    assert _Tomorrow.now().strftime(date_format) in fresh.tokenizer.decode(list(fresh.train[0].input_ids)), (
        "a job without a checkpoint renders the day it runs"
    )
    resumed = Trainer(job, options)
    resumed.resume_point()
    assert [list(s.input_ids) for s in resumed.train] == [list(s.input_ids) for s in first.train]


def test_a_checkpoint_from_before_a_field_existed_resumes_when_the_job_leaves_it_to_its_default() -> None:
    """An upgrade of KubeDistill mid-job: the checkpoint's spec lacks the fields added since, and a job that
    does not set them gets their defaults, which do what the earlier version did."""
    saved = _origin().to_json()
    added = ["spec.student.contextParallel", "spec.student.attention", "spec.training.packing"]
    assert set(added) <= _origin().defaulted
    for key in added:
        del saved["spec"][key]
    assert changes(Origin.from_json(saved), _origin()) == []
    assert changes(Origin.from_json(saved), _origin({"spec.student.contextParallel": 2})) == [
        "spec.student.contextParallel (unset) -> 2"
    ]


def test_a_field_newer_than_the_checkpoint_that_the_job_sets_is_still_a_change() -> None:
    saved = _origin().to_json()
    del saved["spec"]["spec.training.seed"]
    (found,) = changes(Origin.from_json(saved), _origin({"spec.training.seed": 7}))
    assert found == "spec.training.seed (unset) -> 7"
