"""Cross-tokenizer samples: each side's targets placed in the response text, and which of them align."""

import copy

import pytest

from kubedistill.api.spec import DataSource, DataSpec, Mode
from kubedistill.runtime.data.alignment import aligned_by_start, aligned_exactly
from kubedistill.runtime.data.errors import ChatTemplateError
from kubedistill.runtime.data.records import Record
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.data.tokenize import SampleBuilder
from kubedistill.runtime.demo.data import chat_records
from tests.runtime.algorithms.conftest import Tokenizers, samples
from tests.runtime.conftest import TinyWorld

CHATS = DataSource(path="train.jsonl")
PAIRS = DataSource(path="train.jsonl", prompt_key="prompt", response_key="response")
CONTEXT = DataSource(path="train.jsonl", teacher_input_key="context")
ROOMY = {"max_length": 4096, "prompt_max_length": 2048}
RECORDS = chat_records(24, seed=3)
# Both tokenizers split "ö" and "é" (unseen in training) into two byte tokens each.
ACCENTED = {
    "messages": [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "The wörld likes café."},
    ]
}


def build(
    student, teacher, fields: dict, source: DataSource = CHATS, mode: Mode = Mode.OFF_POLICY, **data: object
) -> Sample:
    spec = DataSpec(train=source, **(ROOMY | data))
    builder = SampleBuilder(source, spec, student, mode, teacher, cross_tokenizer=True)
    return builder(Record("mem:1", fields))


def target_texts(tokenizer, ids: tuple[int, ...], mask: tuple[bool, ...]) -> list[str]:
    return [tokenizer.decode([token]) for token, target in zip(ids, mask, strict=True) if target]


def student_texts(tokenizers: Tokenizers, sample: Sample) -> list[str]:
    return target_texts(tokenizers.student, sample.input_ids, sample.target_mask)


def teacher_texts(tokenizers: Tokenizers, sample: Sample) -> list[str]:
    return target_texts(tokenizers.teacher, sample.teacher_input_ids, sample.teacher_target_mask)


def response_text(content: str) -> str:
    """One assistant message in response-text coordinates: its content, the turn's end and the gap."""
    return content + "\x00\x00"


@pytest.mark.parametrize("record", RECORDS[:8], ids=lambda r: r["messages"][1]["content"])
def test_each_content_token_spans_its_own_characters_of_the_response(tokenizers: Tokenizers, record) -> None:
    sample = build(tokenizers.student, tokenizers.teacher, record)
    content = record["messages"][1]["content"]
    text = response_text(content)
    for texts, spans in (
        (student_texts(tokenizers, sample), sample.target_spans),
        (teacher_texts(tokenizers, sample), sample.teacher_target_spans),
    ):
        *tokens, end_of_turn = zip(texts, spans.tolist(), strict=True)
        assert [text[start:end] for _, (start, end) in tokens] == [piece for piece, _ in tokens]
        assert end_of_turn == ("<|im_end|>", [len(content), len(content) + 1])


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r["messages"][1]["content"])
def test_targets_aligned_by_start_are_predicted_from_the_same_response_text(
    tokenizers: Tokenizers, record
) -> None:
    sample = build(tokenizers.student, tokenizers.teacher, record)
    student, teacher = student_texts(tokenizers, sample), teacher_texts(tokenizers, sample)
    pairs = sample.aligned_targets()
    assert pairs[0] == (0, 0) and pairs[-1] == (len(student) - 1, len(teacher) - 1), "first and end of turn"
    for i, j in pairs:
        assert "".join(student[:i]) == "".join(teacher[:j])
    unaligned = set(range(len(student))) - {i for i, _ in pairs}
    for i in unaligned:
        assert all("".join(student[:i]) != "".join(teacher[:j]) for j in range(len(teacher)))


def test_the_two_tokenizers_split_the_demo_text_differently(tokenizers: Tokenizers) -> None:
    built = [build(tokenizers.student, tokenizers.teacher, record) for record in RECORDS]
    assert sum(s.num_targets for s in built) > sum(sum(s.teacher_target_mask) for s in built)
    assert any(len(s.aligned_targets()) < s.num_targets for s in built)


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r["messages"][1]["content"])
def test_exactly_aligned_targets_are_the_same_text_after_the_same_prefix(
    tokenizers: Tokenizers, record
) -> None:
    sample = build(tokenizers.student, tokenizers.teacher, record)
    student, teacher = student_texts(tokenizers, sample), teacher_texts(tokenizers, sample)
    exact = sample.aligned_targets(exactly=True)
    assert set(exact) <= set(sample.aligned_targets())
    for i, j in exact:
        assert student[i] == teacher[j]
    by_start = dict(sample.aligned_targets())
    missing = [i for i, j in by_start.items() if student[i] == teacher[j] and (i, j) not in exact]
    assert missing == []


def test_a_character_split_over_byte_tokens_aligns_only_where_it_starts(tokenizers: Tokenizers) -> None:
    sample = build(tokenizers.student, tokenizers.teacher, ACCENTED)
    student = student_texts(tokenizers, sample)
    continuation = [i for i, (start, end) in enumerate(sample.target_spans) if start == end]
    assert len(continuation) == 2, student
    assert not {i for i, _ in sample.aligned_targets()} & set(continuation)
    first_bytes = [i - 1 for i in continuation]
    assert not {i for i, _ in sample.aligned_targets(exactly=True)} & set(first_bytes)
    assert {i for i, _ in sample.aligned_targets()} >= set(first_bytes)


def test_a_tokenizer_aligned_with_itself_pairs_every_whole_target(tokenizers: Tokenizers) -> None:
    for record in [*RECORDS[:6], ACCENTED]:
        sample = build(tokenizers.student, tokenizers.student, record)
        assert sample.target_spans.tolist() == sample.teacher_target_spans.tolist()
        count = sample.num_targets
        covers = [start < end for start, end in sample.target_spans]
        assert sample.aligned_targets() == [(i, i) for i in range(count) if covers[i]]
        assert sample.aligned_targets(exactly=True) == [
            (i, i) for i in range(count) if covers[i] and (i + 1 == count or covers[i + 1])
        ]


def test_every_turn_of_a_multi_turn_chat_has_its_own_place_in_the_response_text(
    tokenizers: Tokenizers,
) -> None:
    answers = ("The small frog likes flies.", "five six seven.")
    chat = {
        "messages": [
            {"role": "user", "content": "Tell me about a small frog."},
            {"role": "assistant", "content": answers[0]},
            {"role": "user", "content": "Count from five to seven."},
            {"role": "assistant", "content": answers[1]},
        ]
    }
    sample = build(tokenizers.student, tokenizers.teacher, chat)
    text = response_text(answers[0]) + response_text(answers[1])
    for texts, spans in (
        (student_texts(tokenizers, sample), sample.target_spans),
        (teacher_texts(tokenizers, sample), sample.teacher_target_spans),
    ):
        pieces = ["\x00" if piece == "<|im_end|>" else piece for piece in texts]
        assert [text[start:end] for start, end in spans] == pieces
    assert sample.aligned_targets()[-1] == (sample.num_targets - 1, sum(sample.teacher_target_mask) - 1)


def test_plain_text_records_align_their_responses(tokenizers: Tokenizers) -> None:
    fields = {"prompt": "Tell me about a small frog.", "response": " The small frog likes flies."}
    sample = build(tokenizers.student, tokenizers.teacher, fields, PAIRS, apply_chat_template=False)
    text = response_text(fields["response"])
    for texts, spans in (
        (student_texts(tokenizers, sample), sample.target_spans),
        (teacher_texts(tokenizers, sample), sample.teacher_target_spans),
    ):
        assert [text[start:end] for start, end in spans[:-1]] == texts[:-1]
        assert spans[-1].tolist() == [len(fields["response"]), len(fields["response"]) + 1]
    assert sample.aligned_targets()[0] == (0, 0)


def test_the_teacher_of_context_distillation_sees_its_prompt_and_aligns_on_the_response(
    tokenizers: Tokenizers,
) -> None:
    record = RECORDS[0] | {"context": "Answer tersely. " + RECORDS[0]["messages"][0]["content"]}
    sample = build(tokenizers.student, tokenizers.teacher, record, CONTEXT)
    plain = build(tokenizers.student, tokenizers.teacher, RECORDS[0])
    assert "Answer tersely." in tokenizers.teacher.decode(sample.teacher_input_ids)
    assert sample.teacher_target_spans.tolist() == plain.teacher_target_spans.tolist()
    assert sample.aligned_targets() == plain.aligned_targets()


def test_a_cut_response_keeps_the_teacher_targets_that_start_within_the_students_text(
    tokenizers: Tokenizers,
) -> None:
    full = build(tokenizers.student, tokenizers.teacher, RECORDS[0])
    cut = build(tokenizers.student, tokenizers.teacher, RECORDS[0], max_length=full.prompt_length + 4)
    assert cut.num_targets == 4
    covered = cut.target_spans[-1][1]
    kept = sum(cut.teacher_target_mask)
    assert all(start < covered for start, _ in cut.teacher_target_spans)
    assert full.teacher_target_spans[kept][0] >= covered
    assert cut.teacher_target_spans.tolist() == full.teacher_target_spans[:kept].tolist()


def test_a_template_that_rewrites_the_content_cannot_be_aligned(tokenizers: Tokenizers) -> None:
    shouting = copy.deepcopy(tokenizers.teacher)
    shouting.chat_template = tokenizers.teacher.chat_template.replace(
        "message['content']", "message['content'] | upper"
    )
    with pytest.raises(ChatTemplateError, match="changes the content of assistant message 1"):
        build(tokenizers.student, shouting, RECORDS[0])


def test_a_template_that_trims_the_content_still_aligns(tokenizers: Tokenizers) -> None:
    trimming = copy.deepcopy(tokenizers.teacher)
    trimming.chat_template = tokenizers.teacher.chat_template.replace(
        "message['content']", "message['content'] | trim"
    )
    padded = {"messages": [RECORDS[0]["messages"][0], {"role": "assistant", "content": " Five. "}]}
    sample = build(tokenizers.student, trimming, padded)
    assert sample.teacher_target_spans[0][0] == 1, "the content starts after the space the template dropped"
    assert sample.teacher_target_spans[-1].tolist() == [7, 8], (
        "the end of turn falls where the untrimmed content ends"
    )
    assert sample.aligned_targets()[-1] == (sample.num_targets - 1, len(sample.teacher_target_spans) - 1)


@pytest.mark.parametrize(
    ("align", "student", "teacher", "pairs"),
    [
        pytest.param(
            aligned_by_start, [(0, 3), (3, 5), (5, 9)], [(0, 3), (3, 9)], [(0, 0), (1, 1)], id="start"
        ),
        pytest.param(aligned_exactly, [(0, 3), (3, 5), (5, 9)], [(0, 3), (3, 9)], [(0, 0)], id="exact"),
        pytest.param(
            aligned_by_start, [(0, 1), (1, 1), (1, 2)], [(0, 1), (1, 2)], [(0, 0), (2, 1)], id="bytes"
        ),
        pytest.param(aligned_exactly, [(0, 1), (1, 1), (1, 2)], [(0, 1), (1, 2)], [(2, 1)], id="bytes-exact"),
        pytest.param(aligned_by_start, [(4, 4), (4, 6)], [(4, 6)], [(1, 0)], id="markup-before"),
    ],
)
def test_alignment_of_spans(align, student, teacher, pairs) -> None:
    assert align(student, teacher) == pairs


def test_a_vanilla_job_refuses_a_teacher_tokenizer_with_another_vocabulary(
    tiny: TinyWorld, tokenizers: Tokenizers
) -> None:
    with pytest.raises(
        ValueError, match=r"^spec.distillation.algorithm: the teacher's tokenizer has another"
    ):
        samples(tiny, tokenizers.student, tokenizers.teacher, cross_tokenizer=False)


def test_a_cross_tokenizer_job_with_one_tokenizer_keeps_the_plain_samples(
    tiny: TinyWorld, tokenizers: Tokenizers
) -> None:
    same = copy.deepcopy(tokenizers.student)
    assert samples(tiny, tokenizers.student, same) == samples(
        tiny, tokenizers.student, None, cross_tokenizer=False
    )


def test_a_cross_tokenizer_job_gives_every_sample_the_teachers_tokens(
    tiny: TinyWorld, tokenizers: Tokenizers
) -> None:
    loaded = samples(tiny, tokenizers.student, tokenizers.teacher, count=1000)
    assert len(loaded) == 96
    assert all(s.teacher_input_ids is not None and s.teacher_target_spans is not None for s in loaded)


def test_a_teacher_tokenizer_without_a_chat_template_is_refused_naming_the_field(
    tiny: TinyWorld, tokenizers: Tokenizers
) -> None:
    plain = copy.deepcopy(tokenizers.teacher)
    plain.chat_template = None
    with pytest.raises(
        ValueError, match=r"^spec.teacher.tokenizer: the teacher's tokenizer has no chat template"
    ):
        samples(tiny, tokenizers.student, plain)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"target_spans": ((0, 1),)}, "go together", id="spans-alone"),
        pytest.param(
            {"target_spans": ((0, 1),), "teacher_target_spans": ((0, 1),)},
            "teacher_input_ids is missing",
            id="no-teacher",
        ),
        pytest.param(
            {
                "teacher_input_ids": (1, 2, 3),
                "teacher_target_mask": (False, True, True),
                "target_spans": ((0, 1),),
                "teacher_target_spans": ((0, 1), (1, 2)),
            },
            "target_spans has 1 spans for 2 targets",
            id="student-span-count",
        ),
        pytest.param(
            {
                "teacher_input_ids": (1, 2, 3),
                "teacher_target_mask": (False, True, True),
                "target_spans": ((0, 1), (1, 2)),
                "teacher_target_spans": ((0, 1),),
            },
            "teacher_target_spans has 1 spans for 2 targets",
            id="teacher-span-count",
        ),
    ],
)
def test_inconsistent_cross_tokenizer_samples_are_rejected(overrides: dict, message: str) -> None:
    fields = {
        "input_ids": (10, 11, 12, 13),
        "target_mask": (False, False, True, True),
        "source": "mem:1",
        "prompt_length": 2,
    }
    with pytest.raises(ValueError, match=message):
        Sample(**(fields | overrides))


def test_different_target_counts_are_fine_once_both_sides_have_spans() -> None:
    sample = Sample(
        input_ids=(10, 11, 12, 13),
        target_mask=(False, False, True, True),
        source="mem:1",
        prompt_length=2,
        teacher_input_ids=(1, 2, 3),
        teacher_target_mask=(False, False, True),
        target_spans=((0, 2), (2, 3)),
        teacher_target_spans=((0, 3),),
    )
    assert sample.aligned_targets() == [(0, 0)]
    assert sample.teacher_labels() == [3]


def test_offsets_without_leading_spaces_give_the_same_spans(tokenizers: Tokenizers) -> None:
    """GPT-2's tokenizer trims the space off a word's offsets; the word still owns it."""
    from tokenizers import processors

    trimmed = copy.deepcopy(tokenizers.teacher)
    trimmed.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    offsets = trimmed(" small frog", add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert offsets[-1] == (7, 11), 'the tokenizer leaves the space before "frog" out'
    for record in RECORDS[:6]:
        expected = build(tokenizers.student, tokenizers.teacher, record)
        assert (
            build(tokenizers.student, trimmed, record).teacher_target_spans.tolist()
            == expected.teacher_target_spans.tolist()
        )
