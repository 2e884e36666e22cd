"""spec.generation.steps over an endpoint whose replies are scripted per message: each step writes its own
file, in order, resumes and refuses as the answers' file does, skips and counts what it cannot use, and the
student trains on the last answer step's records."""

import json
import math
from pathlib import Path
from typing import Any

import pytest

from kubedistill.runtime.generation.store import GenerationRefused
from kubedistill.runtime.generation.synthesis import PhaseResult, StepFailed, run_phase
from tests.runtime.generation.jobs import endpoint_job, prompt_file
from tests.runtime.generation.scripted_server import Answer, completion, scripted_server

ENV = {"TEST_API_KEY": "sk-test"}


def _run(job: Any, out: Path, lines: list[str] | None = None) -> PhaseResult:
    return run_phase(job, out, ENV, echo=(lines if lines is not None else []).append, backoff_seconds=0.01)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _skipped(path: Path) -> dict[str, str]:
    return {json.loads(line)["source"]: json.loads(line)["reason"] for line in path.read_text().splitlines()}


def test_the_steps_run_in_order_each_into_its_own_file_and_training_reads_the_last(tmp_path: Path) -> None:
    train = prompt_file(tmp_path / "prompts.jsonl", ["one", "two", "three"])
    steps = [
        {"kind": "shortToLong", "template": "Extend {answer} of {instruction}"},
        {"kind": "instructionExpansion", "template": "Like: {examples}", "answerTag": "", "newPerSeed": 2},
        {"kind": "chainOfThought", "template": "Think: {instruction}"},
        {"kind": "instructionRefinement", "template": "Refine: {instruction}", "answerTag": ""},
    ]
    lines: list[str] = []
    with scripted_server({}) as server:
        result = _run(endpoint_job(train, server.url, steps=steps), tmp_path / "out", lines)
    generated = tmp_path / "out" / "generated"
    expansion = _records(generated / "from-endpoint.step1-instructionExpansion.jsonl")
    assert len(expansion) == 6, "newPerSeed 2 for each of 3 seeds"
    asked = [(body["messages"][-1]["content"], body["seed"]) for body in server.bodies]
    expanding = sorted(
        (message.split("\n")[0], seed) for message, seed in asked if message.startswith("Like: ")
    )
    assert expanding == [
        (f"Like: {seed}", sample) for seed in ("one", "three", "two") for sample in (11, 12)
    ], "each seed first among its examples, its samples drawn with the seed + their index"
    assert all(len(message.split("\n")) == 3 for message, _ in asked if message.startswith("Like: ")), (
        "the seed and 2 others (examples: 3)"
    )
    refined = _records(generated / "from-endpoint.step3-instructionRefinement.jsonl")
    # The scripted server answers a message the same whatever the seed: 3 new prompts, each made twice.
    assert len(refined) == 6, "the 3 seeds stay beside the 3 distinct new prompts, then each is refined"
    assert "an answer to Refine: one" in {record["messages"][-1]["content"] for record in refined}
    answers = _records(generated / "from-endpoint.jsonl")
    assert answers[0]["messages"][-2]["content"] == "an answer to Refine: one", (
        "the record keeps the question"
    )
    assert answers[0]["response"] == "an answer to Think: an answer to Refine: one", (
        "asked with chainOfThought"
    )
    extended = _records(result.path)
    assert result.path == generated / "from-endpoint.step0-shortToLong.jsonl"
    assert extended[0]["messages"][-1]["content"] == (
        "an answer to Extend an answer to Think: an answer to Refine: one of an answer to Refine: one"
    )
    assert [step.report["generated"] for step in result.steps] == [6, 6, 6]
    assert lines[0] == (
        "generation step 1 (instructionExpansion): 6 of 6 kept from 3 records in "
        f"{generated / 'from-endpoint.step1-instructionExpansion.jsonl'} (6 new); skipped: none"
    )
    assert lines[2].startswith("generation: 6 responses to 6 prompts")
    assert lines[3].startswith("generation step 0 (shortToLong): 6 of 6 kept from 6 records")


def _judge_job(train: Path, url: str, **judge: Any) -> Any:
    return endpoint_job(
        train, url, steps=[{"kind": "judge", "template": "Judge {answer}", "threshold": 5, **judge}]
    )


def test_a_judge_keeps_records_scored_at_or_above_the_threshold_and_lists_the_rest(tmp_path: Path) -> None:
    train = prompt_file(tmp_path / "prompts.jsonl", ["one", "two", "three", "four"])
    script = {
        "Judge an answer to one": [completion("<score>8</score>")],
        "Judge an answer to two": [completion("It is fine. <score> 5 </score>")],
        "Judge an answer to three": [completion("<score>2</score>")],
        "Judge an answer to four": [completion("I would say seven.")],
    }
    lines: list[str] = []
    with scripted_server(script) as server:
        result = _run(_judge_job(train, server.url), tmp_path / "out", lines)
    kept = _records(result.path)
    assert [(record["messages"][-1]["content"], record["score"]) for record in kept] == [
        ("an answer to one", 8),
        ("an answer to two", 5),
    ]
    (judge,) = result.steps
    assert judge.report["skipped"] == {"belowThreshold": 1, "unscored": 1}
    skipped = _skipped(judge.skipped_path)
    assert sorted(skipped.values()) == ["belowThreshold", "unscored"]
    assert lines[-1].endswith(f"skipped: 1 belowThreshold, 1 unscored (listed in {judge.skipped_path})")


def _scored(tokens: list[tuple[str, list[tuple[str, float]]]]) -> Answer:
    """A reply of these tokens, each with its top tokens and their probabilities, as SGLang and vLLM send."""
    status, body, headers = completion("".join(token for token, _ in tokens))
    assert isinstance(body, dict)

    def entry(token: str, probability: float) -> dict[str, Any]:
        return {"token": token, "logprob": math.log(probability), "bytes": list(token.encode())}

    body["choices"][0]["logprobs"] = {
        "content": [
            {**entry(token, top[0][1]), "top_logprobs": [entry(text, p) for text, p in top]}
            for token, top in tokens
        ]
    }
    return status, body, headers


def test_a_judge_reading_logprobs_scores_the_expected_digit_where_it_first_writes_one(tmp_path: Path) -> None:
    train = prompt_file(tmp_path / "prompts.jsonl", ["one", "two", "three"])
    script = {
        # <score> then 7 (p .5), 9 (.25) or a word (.25): the digits renormalised, 7 x 2/3 + 9 x 1/3.
        "Judge an answer to one": [
            _scored(
                [
                    ("<", [("<", 0.9)]),
                    ("score>", [("score>", 0.9)]),
                    ("7", [("7", 0.5), ("9", 0.25), ("x", 0.25)]),
                ]
            )
        ],
        "Judge an answer to two": [_scored([("6", [("6", 0.5), ("7", 0.5)])])],
        "Judge an answer to three": [_scored([("none", [("none", 0.6), ("9", 0.4)])])],
    }
    with scripted_server(script) as server:
        result = _run(_judge_job(train, server.url, scoreFrom="logprobs", threshold=6.6), tmp_path / "out")
    assert {(body["logprobs"], body["top_logprobs"]) for body in server.bodies if "Judge" in str(body)} == {
        (True, 20)
    }
    (kept,) = _records(result.path)
    assert kept["score"] == pytest.approx(23 / 3)
    assert result.steps[0].report["skipped"] == {"belowThreshold": 1, "unscored": 1}
    skipped = [json.loads(line) for line in result.steps[0].skipped_path.read_text().splitlines()]
    assert {skip["reason"]: skip["detail"] for skip in skipped}["belowThreshold"] == "scored 6.5, below 6.6"


def test_an_instruction_step_skips_replies_without_its_answer_tag(tmp_path: Path) -> None:
    train = prompt_file(tmp_path / "prompts.jsonl", ["one", "two"])
    script = {"Refine: one": [completion("Sure. <answer> Count one thing, then stop. </answer>")]}
    steps = [{"kind": "instructionRefinement", "template": "Refine: {instruction}"}]
    with scripted_server(script) as server:
        result = _run(endpoint_job(train, server.url, steps=steps), tmp_path / "out")
    (refined,) = result.steps
    assert refined.report["skipped"] == {"noAnswerTag": 1}
    assert [record["messages"][-2]["content"] for record in _records(result.path)] == [
        "Count one thing, then stop."
    ]


def test_a_step_that_keeps_nothing_stops_the_phase_naming_it(tmp_path: Path) -> None:
    train = prompt_file(tmp_path / "prompts.jsonl", ["one", "two"])
    steps = [{"kind": "instructionRefinement", "template": "Refine: {instruction}"}]
    with scripted_server({}) as server, pytest.raises(StepFailed) as failed:
        _run(endpoint_job(train, server.url, steps=steps), tmp_path / "out")
    skipped = tmp_path / "out" / "generated" / "from-endpoint.step0-instructionRefinement.skipped.jsonl"
    assert (
        str(failed.value)
        == f"spec.generation.steps[0]: no record was kept (see {skipped}); nothing to go on with"
    )
    assert not (tmp_path / "out" / "generated" / "from-endpoint.jsonl").exists(), "no answer was asked for"


def test_a_rerun_asks_only_what_a_step_lacks_and_another_template_is_refused(tmp_path: Path) -> None:
    train = prompt_file(tmp_path / "prompts.jsonl", ["one", "two", "three"])
    steps = [{"kind": "longToShort", "template": "Shorten {answer}"}]
    with scripted_server({}) as server:
        job = endpoint_job(train, server.url, steps=steps)
        first = _run(job, tmp_path / "out")
        complete = first.path.read_text()
        lines = complete.splitlines(keepends=True)
        # As a run killed mid-way leaves it: no report, one whole line and half of the second.
        first.path.write_text(lines[0] + lines[1][:10])
        first.path.with_suffix(".report.json").unlink()
        server.asked.clear()
        again = _run(job, tmp_path / "out")
        assert sum(server.asked.values()) == 2, "the answers are reused, and the step asks its 2 missing"
        assert again.path.read_text() == complete
        assert again.steps[0].report["reusedLines"] == 1
        server.asked.clear()
        assert _run(job, tmp_path / "out").steps[0].reused and not server.asked
        first.path.with_suffix(".report.json").unlink()
        other = endpoint_job(train, server.url, steps=[{"kind": "longToShort", "template": "Cut {answer}"}])
        with pytest.raises(GenerationRefused) as refused:
            _run(other, tmp_path / "out")
    assert str(refused.value).startswith(f"{first.path}:1: generated by scripted at {server.url} with ")
    assert '{"kind": "longToShort", "template": "Shorten {answer}"}' in str(refused.value)
