"""Mode preference's records: TRL's preference format (conversational or strings, EasyDistill's pairs) becomes
two samples per pair, chosen then rejected, sharing the pair's index as their group; a malformed pair is a bad
record named by its file:line; a pair whose answer cannot fit is skipped and counted."""

from pathlib import Path

import numpy as np
import pytest

from kubedistill.api.spec import Mode
from kubedistill.runtime.data.errors import BadRecordError
from kubedistill.runtime.data.load import load_samples

from .builders import decoded_targets, spec, write_jsonl

CONVERSATIONAL = {
    "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    "chosen": [{"role": "assistant", "content": "The answer is 4."}],
    "rejected": [{"role": "assistant", "content": "hello there"}],
}
STRINGS = {"prompt": "What is the capital of France?", "chosen": "Paris", "rejected": "I am fine"}


def test_each_pair_is_its_chosen_then_its_rejected_sample_in_one_group(tokenizer, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "pairs.jsonl", [CONVERSATIONAL, STRINGS])
    loaded = load_samples(source, spec(source), tokenizer, mode=Mode.PREFERENCE)

    samples = loaded.samples
    assert [s.group for s in samples] == [0, 0, 1, 1]
    assert [s.source for s in samples] == [f"{source.path}:{line}" for line in (1, 1, 2, 2)]
    answers = [decoded_targets(tokenizer, s.input_ids.tolist(), s.target_mask.tolist()) for s in samples]
    assert "The answer is 4." in answers[0] and "hello there" in answers[1]
    assert "Paris" in answers[2] and "I am fine" in answers[3]
    # The prompt is the same on both sides of a pair: only the answers differ.
    for chosen, rejected in (samples[0:2], samples[2:4]):
        assert list(chosen.input_ids[: chosen.prompt_length]) == list(
            rejected.input_ids[: rejected.prompt_length]
        )


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"prompt": "What is 2+2?", "chosen": "4"}, "has no 'rejected'"),
        ({"messages": [{"role": "user", "content": "hello"}]}, "has no 'prompt'"),
        (
            {"prompt": "hello", "chosen": 4, "rejected": "no"},
            "'chosen' must be a list of messages or a string",
        ),
        ({**CONVERSATIONAL, "rejected": [{"role": "user", "content": "hi"}]}, "'rejected' must start with"),
        ({**STRINGS, "prompt": [{"role": "assistant", "content": "hi"}]}, "'prompt' ends with an assistant"),
        ({**STRINGS, "beta": 0}, "'beta' must be a positive number"),
        ({**STRINGS, "beta": "high"}, "'beta' must be a positive number"),
    ],
)
def test_a_malformed_pair_is_a_bad_record_naming_its_line_and_key(
    tokenizer, tmp_path: Path, record: dict, problem: str
) -> None:
    source = write_jsonl(tmp_path / "pairs.jsonl", [STRINGS, record])
    with pytest.raises(BadRecordError, match=rf"pairs.jsonl:2: .*{problem}"):
        load_samples(source, spec(source), tokenizer, mode=Mode.PREFERENCE)
    skipped = load_samples(source, spec(source, on_bad_record="skip"), tokenizer, mode=Mode.PREFERENCE)
    assert [bad.source for bad in skipped.bad_records] == [f"{source.path}:2"]
    assert [s.group for s in skipped.samples] == [0, 0]


def test_a_long_answer_is_cut_and_counted_and_a_pair_whose_answer_cannot_fit_is_skipped(
    tokenizer, tmp_path: Path
) -> None:
    long_prompt = "Tell me more about it. " * 6
    records = [
        {"prompt": "hello", "chosen": "Tell me more about it. " * 8, "rejected": "fine"},
        {"prompt": long_prompt, "chosen": "fine", "rejected": "fine"},
    ]
    source = write_jsonl(tmp_path / "pairs.jsonl", records)
    data = spec(source, on_bad_record="skip", max_length=30, prompt_max_length=30)
    loaded = load_samples(source, data, tokenizer, mode=Mode.PREFERENCE)

    assert [s.group for s in loaded.samples] == [0, 0]
    assert loaded.samples[0].truncation is not None and loaded.samples[1].truncation is None
    assert all(len(s.input_ids) <= 30 for s in loaded.samples)
    assert [bad.source for bad in loaded.bad_records] == [f"{source.path}:2"]
    assert "leaving no room for the response within maxLength 30" in loaded.bad_records[0].problem


def test_a_pairs_own_beta_cogpos_goes_with_both_its_samples_also_through_the_prepared_set(
    tokenizer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "pairs.jsonl", [{**STRINGS, "beta": 0.5}, CONVERSATIONAL])
    cache = tmp_path / "prepared"
    first = load_samples(source, spec(source), tokenizer, mode=Mode.PREFERENCE, cache=cache)
    again = load_samples(source, spec(source), tokenizer, mode=Mode.PREFERENCE, cache=cache)

    assert isinstance(again.samples[0].input_ids.base, np.memmap), "read back from the prepared set"
    for loaded in (first, again):
        assert [(s.group, s.beta) for s in loaded.samples] == [(0, 0.5), (0, 0.5), (1, None), (1, None)]
    assert again.sha256 == first.sha256
    without = write_jsonl(tmp_path / "plain.jsonl", [STRINGS, CONVERSATIONAL])
    plain = load_samples(without, spec(without), tokenizer, mode=Mode.PREFERENCE, cache=tmp_path / "other")
    assert plain.sha256 != first.sha256, "a pair's own beta is part of what the data is"
