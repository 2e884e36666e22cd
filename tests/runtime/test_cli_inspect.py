"""`kubedistill inspect`: what a job trains on, before a run, as the trainer itself reads the data."""

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from transformers import AutoTokenizer

from kubedistill.api.spec import DataSource, DataSpec, Mode
from kubedistill.runtime.data import load_samples
from tests.runtime.conftest import TinyWorld, job_manifest
from tests.test_bad_inputs import invoke


def _job(tmp_path: Path, tiny: TinyWorld, **spec: Any) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_manifest(tiny, "inspected", **spec)), encoding="utf-8")
    return job


def _chat(record: dict[str, Any]) -> tuple[str, str]:
    user, assistant = record["messages"]
    return user["content"], assistant["content"]


@pytest.fixture(scope="module")
def student_tokenizer(tiny: TinyWorld) -> Any:
    return AutoTokenizer.from_pretrained(tiny.student)


def test_inspect_marks_the_trained_tokens_of_the_first_records_and_counts_every_source(
    tiny: TinyWorld, tmp_path: Path, student_tokenizer: Any
) -> None:
    job = _job(tmp_path, tiny, data={"eval": {"path": str(tiny.eval)}})

    done = invoke(["inspect", str(job), "--records", "2"])

    assert done.exit_code == 0, done.stderr
    records = [json.loads(line) for line in tiny.train.read_text().splitlines()]
    for number, record in enumerate(records[:2], start=1):
        question, answer = _chat(record)
        assert (
            f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n[[{answer}<|im_end|>]]\n"
        ) in done.stdout
        assert f"── {tiny.train}:{number}: " in done.stdout
    assert f"── {tiny.train}:3: " not in done.stdout
    for field, path in (("spec.data.train", tiny.train), ("spec.data.eval", tiny.eval)):
        source = DataSource(path=str(path))
        samples = load_samples(
            source,
            DataSpec(train=source, max_length=64, prompt_max_length=32),
            student_tokenizer,
            mode=Mode.OFF_POLICY,
        ).samples
        tokens = sum(len(sample.input_ids) for sample in samples)
        targets = sum(sample.num_targets for sample in samples)
        assert (
            f"{field}: {len(samples)} samples, {tokens} tokens, {targets} trained, 0 shortened" in done.stdout
        )
    assert "bad records skipped (onBadRecord: skip): 0" in done.stdout


def test_inspect_shows_the_teachers_own_prompt_beside_the_students(tiny: TinyWorld, tmp_path: Path) -> None:
    data = tmp_path / "context.jsonl"
    chat = {
        "messages": [
            {"role": "user", "content": "Tell me about a frog."},
            {"role": "assistant", "content": "The frog likes ponds."},
        ],
        "hint": "Answer tersely. Tell me about a frog.",
    }
    # As many as the tiny job's global batch: fewer would be refused, by inspect as by run.
    data.write_text((json.dumps(chat) + "\n") * 16, encoding="utf-8")
    job = _job(
        tmp_path, tiny, data={"train": {"path": str(data), "teacherInputKey": "hint"}, "promptMaxLength": 48}
    )

    done = invoke(["inspect", str(job), "--records", "1"])

    assert done.exit_code == 0, done.stderr
    student, teacher = done.stdout.split("   the teacher sees (its prompt from 'hint'): ")
    assert "<|im_start|>user\nTell me about a frog.<|im_end|>" in student
    assert teacher.split("\n", 1)[1].startswith(
        "<|im_start|>user\nAnswer tersely. Tell me about a frog.<|im_end|>\n"
        "<|im_start|>assistant\n[[The frog likes ponds.<|im_end|>]]"
    )


def test_inspect_refuses_bad_data_with_the_line_a_run_prints(tiny: TinyWorld, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    job = _job(tmp_path, tiny, data={"train": {"path": str(data)}})

    done = invoke(["inspect", str(job)])

    assert done.exit_code == 1
    assert done.stderr.splitlines() == [f"{job}: {data}:1: 'messages' has no assistant message to train on"]


def test_inspect_leaves_the_checkpoint_folder_alone(tiny: TinyWorld, tmp_path: Path) -> None:
    """Only a run keeps the prepared data there (`data.cache`); inspecting a job only reads."""
    job = _job(tmp_path, tiny, checkpoint={"path": str(tmp_path / "ckpt")})
    done = invoke(["inspect", str(job), "--records", "1"])
    assert done.exit_code == 0, done.stderr
    assert not (tmp_path / "ckpt").exists()


def test_inspect_counts_each_source_of_a_mixture_and_its_share_of_an_epoch(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    """The trainer's own loading: each source read up to its maxSamples, and what an epoch takes of each."""
    mixture = [
        {"path": str(tiny.train), "maxSamples": 10, "weight": 3},
        {"path": str(tiny.eval), "weight": 1},
    ]
    job = _job(tmp_path, tiny, data={"train": None, "mixture": mixture})
    assert len(tiny.eval.read_text().splitlines()) == 24

    done = invoke(["inspect", str(job), "--records", "1"])

    assert done.exit_code == 0, done.stderr
    assert "spec.data.mixture: the first 1 of 34 samples" in done.stdout
    assert "spec.data.mixture[0]: 10 samples, " in done.stdout
    assert "spec.data.mixture[1]: 24 samples, " in done.stdout
    # 34 x 3/4 = 25.5 and 34 x 1/4 = 8.5: the remainders tie, and the earlier source takes the one left.
    assert "spec.data.mixture[0]: 10 samples, 26 of each epoch's 34 (repeating its samples)" in done.stdout
    assert "spec.data.mixture[1]: 24 samples, 8 of each epoch's 34 (others each epoch" in done.stdout


def test_a_bad_record_of_a_mixture_source_names_its_file_line_and_its_own_field(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    data = tmp_path / "other.jsonl"
    data.write_text('{"conversation": []}\n', encoding="utf-8")
    mixture = [{"path": str(tiny.train), "weight": 1}, {"path": str(data), "weight": 1}]
    job = _job(tmp_path, tiny, data={"train": None, "mixture": mixture})

    done = invoke(["inspect", str(job)])

    assert done.exit_code == 1
    assert done.stderr.splitlines() == [
        f"{job}: {data}:1: missing key 'messages' (spec.data.mixture[1].inputKey)"
    ]
