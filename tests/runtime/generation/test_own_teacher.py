"""The in-job path on local Ray: the job's own teacher (transformers engine on a Ray actor) answers the
prompts, the student trains on the answers off-policy against the same teacher's hidden states, and a rerun
reuses the answers instead of generating them again; a step (longToShort) rewrites the answers on the same
engines, and the student trains on its file. (sft on a generated file runs end to end in
test_transformers_serve.py; `training_job` is the one difference, tested here.)

The tiny teacher's weights are random, so it never ends an answer: the examples' cut-off answers are kept
here (keepTruncated), and the skip of cut-off answers is tested against the real server
(test_transformers_serve.py) and per reason in test_endpoint.py.
"""

import json
from pathlib import Path

import pytest

from kubedistill.api import parse_job
from kubedistill.runtime.generation.phase import training_job
from tests.runtime.conftest import TinyWorld
from tests.runtime.generation.examples import distinct_prompts, example_manifest, write_manifest
from tests.test_bad_inputs import invoke


@pytest.mark.usefixtures("ray_session")
def test_the_teacher_answers_the_student_trains_offpolicy_and_a_rerun_reuses_the_answers(
    tiny: TinyWorld, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    paths = {
        "demo-output/runs/teacher-sft": tiny.teacher,
        "demo-output/assets/student-init": tiny.student,
        "demo-output/assets/data/student-train.jsonl": distinct_prompts(tmp_path / "prompts.jsonl", 8),
        "demo-output/runs/generate-with-teacher": out,
    }
    shorter = {"kind": "longToShort", "template": "Shorter: {answer}"}
    manifest = example_manifest(
        "generate-with-teacher", paths, maxNewTokens=8, keepTruncated=True, steps=[shorter]
    )
    manifest["spec"]["checkpoint"] = {"path": str(tmp_path / "checkpoints")}
    done = invoke(["run", str(write_manifest(tmp_path / "offpolicy.yaml", manifest))])
    assert done.exit_code == 0, done.stderr
    generated = out / "generated" / "demo-generate-with-teacher.jsonl"
    lines = [json.loads(line) for line in generated.read_text().splitlines()]
    assert [(line["prompt"][-1]["content"], line["sample"]) for line in lines][:2] == [
        (lines[0]["prompt"][-1]["content"], 0),
        (lines[0]["prompt"][-1]["content"], 1),
    ]
    assert len(lines) == 16, "8 prompts x samplesPerPrompt 2"
    assert {line["teacher"] for line in lines} == {str(tiny.teacher)}
    assert {line["endpoint"] for line in lines} == {None}
    assert all(line["response"] for line in lines)
    rewritten = out / "generated" / "demo-generate-with-teacher.step0-longToShort.jsonl"
    records = [json.loads(line) for line in rewritten.read_text().splitlines()]
    assert [record["messages"][:-1] for record in records] == [line["prompt"] for line in lines]
    assert all(record["reply"] and record["endpoint"] is None for record in records), "the same engines"
    offpolicy = json.loads((out / "summary.json").read_text())
    assert offpolicy["steps"] == 1 and offpolicy["mode"] == "offPolicy"
    assert offpolicy["generation"]["steps"] == [
        {"kind": "longToShort", "file": str(rewritten), "inputs": 16, "asked": 16, "kept": 16, "skipped": {}}
    ], "the student trains on the rewritten answers"
    before = generated.read_bytes()

    again = invoke(["run", str(tmp_path / "offpolicy.yaml")])
    assert again.exit_code == 0, again.stderr
    assert f"generation: 16 responses to 8 prompts in {generated} (reused)" in again.stdout
    assert (
        f"generation step 0 (longToShort): 16 of 16 kept from 16 records in {rewritten} (reused)"
        in again.stdout
    )
    assert "is finished" in again.stdout, "nothing trained again"
    assert generated.read_bytes() == before


def test_sft_trains_on_the_generated_file_alone_and_offpolicy_keeps_its_teacher(tmp_path: Path) -> None:
    generated = tmp_path / "generated.jsonl"
    paths = {"demo-output/runs/teacher-sft": Path("/models/teacher")}
    offpolicy = parse_job(example_manifest("generate-with-teacher", paths))
    sft = parse_job(
        {
            **offpolicy.model_dump(by_alias=True, exclude_none=True),
            "spec": {**offpolicy.spec.model_dump(by_alias=True, exclude_none=True), "mode": "sft"},
        }
    )
    for job, teacher in ((offpolicy, "/models/teacher"), (sft, None)):
        trained = training_job(job, generated)
        assert trained.spec.data.train.path == str(generated)
        assert trained.spec.generation is None
        assert (trained.spec.teacher.model if trained.spec.teacher else None) == teacher
