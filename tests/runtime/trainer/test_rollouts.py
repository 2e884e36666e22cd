"""On-policy rounds as people read them: a file of the sampled responses per round, each with the teacher's
divergence on it, written once the round's steps are done, the newest kept, one response logged per round at
the log interval (what a real run writes: `test_modes.py`)."""

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.trainer.rollouts import (
    RolloutLog,
    is_logged_round,
    kept_steps,
    rollout_records,
    steps_to_drop,
)

EOS = 2
MAX_NEW_TOKENS = 3


def _decode(ids: list[int]) -> str:
    return " ".join(f"t{token}" for token in ids)


def _prompt(source: str, ids: tuple[int, ...] = (9, 8)) -> Sample:
    return Sample(input_ids=ids, target_mask=(False,) * len(ids), source=source, prompt_length=len(ids))


def _log(tmp_path: Path, keep: int, steps_per_round: int = 1, log_every: int = 1) -> RolloutLog:
    return RolloutLog(tmp_path, keep, _decode, EOS, MAX_NEW_TOKENS, steps_per_round, log_every)


def _sample(log: RolloutLog, step: int) -> None:
    log.sampled(step, [_prompt("p.jsonl:1"), _prompt("p.jsonl:1")], [[5, EOS], [5, 6, 7]])


def _round(log: RolloutLog, step: int, steps_per_round: int = 1) -> None:
    """A round of two responses sampled and trained through, its responses' divergences 0.5 and 0.25."""
    _sample(log, step)
    divergences = [0.5, 0.25]
    size = len(divergences) // steps_per_round
    for within in range(steps_per_round):
        log.trained(step + within, divergences[within * size : (within + 1) * size])


def _file(log: RolloutLog, step: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (log.directory / f"step-{step}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    ("response", "cut"),
    [
        ([5, 6, 7], True),  # maxNewTokens reached, no end token
        ([5, 6, EOS], False),  # finished on the last allowed token
        ([5, EOS], False),
        ([5, 6], False),  # ended early on another stop token of the engine
    ],
)
def test_a_response_is_cut_when_it_reached_max_new_tokens_without_the_end_token(
    response: list[int], cut: bool
) -> None:
    (record,) = rollout_records(4, [_prompt("p.jsonl:3")], [response], _decode, EOS, MAX_NEW_TOKENS)
    assert record.cut is cut


def test_a_record_holds_the_decoded_prompt_and_response_their_length_and_the_step() -> None:
    records = rollout_records(
        7,
        [_prompt("p.jsonl:3", (9, 8)), _prompt("p.jsonl:4", (1,))],
        [[5, EOS], [6, 6, 6]],
        _decode,
        EOS,
        MAX_NEW_TOKENS,
    )
    assert [record.to_json() for record in records] == [
        {
            "step": 7,
            "source": "p.jsonl:3",
            "prompt": "t9 t8",
            "response": "t5 t2",
            "response_tokens": 2,
            "cut": False,
            "kd_divergence": None,
        },
        {
            "step": 7,
            "source": "p.jsonl:4",
            "prompt": "t1",
            "response": "t6 t6 t6",
            "response_tokens": 3,
            "cut": True,
            "kd_divergence": None,
        },
    ]


@pytest.mark.parametrize(
    ("steps", "keep", "after", "dropped"),
    [
        ([1, 2, 3], 5, None, [1, 2, 3]),  # a fresh run starts without the old rounds
        ([1, 2, 3, 4], 5, 2, [3, 4]),  # resumed at step 2: the later rounds are sampled again
        ([1, 2, 3, 4], 2, 4, [1, 2]),  # the newest two kept
        ([1, 3, 5, 7], 2, 5, [1, 7]),  # both at once
        ([2, 1], 0, 2, [1, 2]),  # keep none
    ],
)
def test_the_rounds_dropped_are_those_trained_again_and_all_but_the_newest_kept(
    steps: list[int], keep: int, after: int | None, dropped: list[int]
) -> None:
    assert steps_to_drop(steps, keep, after) == dropped


@pytest.mark.parametrize(
    ("step", "steps_per_round", "log_every", "logged"),
    [
        (1, 1, 1, True),
        (3, 1, 2, False),
        (4, 1, 2, True),
        (1, 2, 4, False),  # steps 1-2
        (3, 2, 4, True),  # steps 3-4
        (9, 4, 10, True),  # steps 9-12 hold step 10
    ],
)
def test_a_round_is_logged_when_one_of_its_steps_logs_a_progress_line(
    step: int, steps_per_round: int, log_every: int, logged: bool
) -> None:
    assert is_logged_round(step, steps_per_round, log_every) is logged


def test_each_round_is_a_file_named_for_its_first_step_the_newest_kept(tmp_path: Path) -> None:
    log = _log(tmp_path, keep=2)
    for step in (1, 2, 3):
        _round(log, step)
    assert sorted(path.name for path in log.directory.iterdir()) == ["step-2.jsonl", "step-3.jsonl"]
    lines = (log.directory / "step-3.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["step"], r["prompt"], r["response"], r["cut"]) for r in records] == [
        (3, "t9 t8", "t5 t2", False),
        (3, "t9 t8", "t5 t6 t7", True),
    ]


def test_a_resumed_run_keeps_the_rounds_up_to_its_checkpoint_and_a_fresh_one_none(tmp_path: Path) -> None:
    first = _log(tmp_path, keep=5)
    for step in (1, 2, 3, 4):
        _round(first, step)
    _log(tmp_path, keep=5).rewind(2)
    assert kept_steps(first.directory) == [1, 2]
    _log(tmp_path, keep=5).rewind(None)
    assert kept_steps(first.directory) == []


def test_keeping_no_rounds_writes_no_file(tmp_path: Path) -> None:
    _round(_log(tmp_path, keep=0), 1)
    assert not (tmp_path / "rollouts").exists()


def test_one_response_of_a_round_is_logged_at_the_log_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = _log(tmp_path, keep=0, steps_per_round=2, log_every=4)
    with caplog.at_level(logging.INFO, logger="kubedistill.runtime.trainer.rollouts"):
        for step in (1, 3, 5, 7):
            _round(log, step, steps_per_round=2)
    assert caplog.messages == [
        f"rollout for step {step}: 2 responses, 1 cut at maxNewTokens, mean KD divergence 0.375; "
        'p.jsonl:1: ..."t9 t8" -> "t5 t2" (2 tokens, KD divergence 0.5)'
        for step in (3, 7)
    ]


def test_a_round_is_written_when_its_last_step_is_done_each_response_with_its_divergence(
    tmp_path: Path,
) -> None:
    tables: list[tuple[int, list[Any]]] = []
    log = RolloutLog(tmp_path, 5, _decode, EOS, MAX_NEW_TOKENS, 2, 1, sink=lambda s, r: tables.append((s, r)))
    _sample(log, 1)
    log.trained(1, [0.5])
    assert not log.directory.exists() and not tables, "the round's second response is not trained yet"
    log.trained(2, [math.nan])
    # A skipped step's NaN is no number JSON can hold: the response has none.
    assert [r["kd_divergence"] for r in _file(log, 1)] == [0.5, None]
    assert [(step, [r.kd_divergence for r in records]) for step, records in tables] == [(1, [0.5, None])]


def test_a_round_sampled_ahead_waits_for_its_own_steps_and_other_steps_are_no_concern(
    tmp_path: Path,
) -> None:
    log = _log(tmp_path, keep=5)
    _sample(log, 1)
    _sample(log, 2)  # the next step's round, laid out while step 1 trains
    log.trained(1, [0.5, 0.25])
    assert kept_steps(log.directory) == [1]
    log.trained(3, [0.1, 0.1])  # mixing policies: a step on the dataset's responses
    log.trained(2, [0.75, 1.0])
    assert kept_steps(log.directory) == [1, 2]
    assert [r["kd_divergence"] for r in _file(log, 2)] == [0.75, 1.0]


def test_a_run_that_stops_inside_a_round_writes_it_as_it_stands(tmp_path: Path) -> None:
    log = _log(tmp_path, keep=5, steps_per_round=2)
    _sample(log, 1)
    log.trained(1, [0.5])
    log.flush()
    assert [r["kd_divergence"] for r in _file(log, 1)] == [0.5, None]


def test_a_round_held_across_a_recovery_is_trained_again_from_its_first_step(tmp_path: Path) -> None:
    log = _log(tmp_path, keep=5, steps_per_round=2)
    _sample(log, 1)
    log.trained(1, [0.5])
    log.rewind(0)  # the ranks restarted from the checkpoint before the round; the source kept its samples
    log.trained(2, [0.25])
    assert not log.directory.exists(), "step 1 is trained again"
    log.trained(1, [0.75])
    log.trained(2, [0.25])
    assert [r["kd_divergence"] for r in _file(log, 1)] == [0.75, 0.25]
