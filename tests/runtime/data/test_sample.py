import numpy as np
import pytest

from kubedistill.runtime.data.sample import Sample


def sample(**overrides: object) -> Sample:
    fields: dict[str, object] = {
        "input_ids": (10, 11, 12, 13, 14, 15),
        "target_mask": (False, False, False, True, True, False),
        "source": "train.jsonl:1",
        "prompt_length": 3,
    }
    return Sample(**(fields | overrides))


def test_loss_positions_are_the_positions_just_before_each_target() -> None:
    assert sample().loss_positions() == [2, 3]


def test_labels_are_the_target_tokens_in_order() -> None:
    assert sample().labels() == [13, 14]


def test_num_targets_counts_the_mask_and_equals_the_loss_positions() -> None:
    multi_turn = sample(target_mask=(False, True, False, False, True, True), prompt_length=1)
    assert multi_turn.num_targets == 3
    assert multi_turn.loss_positions() == [0, 3, 4]
    assert multi_turn.labels() == [11, 14, 15]


def test_teacher_loss_positions_follow_the_teacher_sequence() -> None:
    with_context = sample(
        teacher_input_ids=(20, 21, 22, 23, 24, 13, 14),
        teacher_target_mask=(False, False, False, False, False, True, True),
    )
    assert with_context.teacher_loss_positions() == [4, 5]


def test_without_teacher_input_the_teacher_loss_positions_are_the_students() -> None:
    assert sample().teacher_loss_positions() == [2, 3]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param(
            {"target_mask": (False, True)}, "input_ids has 6 tokens but target_mask 2", id="lengths"
        ),
        pytest.param({"input_ids": (), "target_mask": (), "prompt_length": 0}, "empty", id="empty"),
        pytest.param(
            {"target_mask": (True, False, False, False, False, False), "prompt_length": 0},
            "first token",
            id="first-token-target",
        ),
        pytest.param({"prompt_length": 4}, "within the prompt", id="target-in-prompt"),
        pytest.param({"prompt_length": 7}, "outside", id="prompt-too-long"),
        pytest.param({"teacher_input_ids": (1, 2)}, "go together", id="teacher-ids-alone"),
        pytest.param(
            {"teacher_input_ids": (1, 2, 3), "teacher_target_mask": (False, False, True)},
            "teacher has 1 targets, the student 2",
            id="teacher-target-count",
        ),
    ],
)
def test_inconsistent_samples_are_rejected(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample(**overrides)


def test_sequences_are_held_as_read_only_int32_and_bool_arrays_whatever_was_handed_in() -> None:
    built = sample(teacher_input_ids=[20, 21, 22, 13, 14], teacher_target_mask=[0, 0, 0, 1, 1])
    assert [(array.dtype, array.flags.writeable) for array in (built.input_ids, built.teacher_input_ids)] == [
        (np.int32, False),
        (np.int32, False),
    ]
    assert built.target_mask.dtype == built.teacher_target_mask.dtype == np.bool_
    assert built.teacher_labels() == [13, 14]


def test_samples_are_equal_when_every_field_is_and_differ_in_one_token() -> None:
    assert sample() == sample(input_ids=np.array([10, 11, 12, 13, 14, 15], dtype=np.int64))
    assert sample() != sample(input_ids=(10, 11, 12, 13, 14, 16))
    assert sample() != sample(source="train.jsonl:2")
