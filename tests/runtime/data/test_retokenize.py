"""On-policy with a teacher that has its own tokenizer: a sampled response read as text and tokenised again
for the teacher gives the sample off-policy data of the same conversation gives."""

import pytest

from kubedistill.api.spec import DataSource, DataSpec, Mode
from kubedistill.runtime.data.chat import ChatFormat
from kubedistill.runtime.data.records import Record
from kubedistill.runtime.data.retokenize import Retokenizer, alignment_counts, student_response, teacher_turn
from kubedistill.runtime.data.sample import Sample
from kubedistill.runtime.data.tokenize import SampleBuilder
from kubedistill.runtime.demo.tiny import build_tokenizer
from kubedistill.runtime.trainer.sources import with_response

from .builders import CORPUS, chat

PAIRS = DataSource(path="train.jsonl", prompt_key="prompt", response_key="response")
CHATS = DataSource(path="train.jsonl")
ROOMY = {"max_length": 4096, "prompt_max_length": 2048}
ANSWER = "Paris is the capital of France. Tell me more about it?"
QUESTION = chat(("system", "You are a careful tutor."), ("user", "What is the capital of France?"))


@pytest.fixture(scope="module")
def student():
    """Coarser than the teacher (the data folder's 512-piece `tokenizer`): the two split the text apart."""
    return build_tokenizer(CORPUS, vocab_size=300)


def builder(student, teacher, mode: Mode, source: DataSource = CHATS, **data: object) -> SampleBuilder:
    spec = DataSpec(train=source, **(ROOMY | data))
    return SampleBuilder(source, spec, student, mode, teacher, cross_tokenizer=True)


def retokenizer(student, teacher, **data: object) -> Retokenizer:
    return Retokenizer.build(student, teacher, DataSpec(train=CHATS, **(ROOMY | data)), ChatFormat())


def generated(sample: Sample) -> list[int]:
    """The student's response tokens of an off-policy sample: what a rollout engine would have sampled (it
    stops at the end-of-turn token; markup after it is no target)."""
    return sample.input_ids[sample.target_mask].tolist()


def off_and_on_policy(student, teacher, fields: dict, source: DataSource = CHATS, **data: object):
    offline = builder(student, teacher, Mode.OFF_POLICY, source, **data)(Record("mem:1", fields))
    prompt_fields = {k: v for k, v in fields.items() if k != "response"}
    if "messages" in fields:
        prompt_fields = {"messages": fields["messages"][:-1]}
    prompt = builder(student, teacher, Mode.ON_POLICY, source, **data)(Record("mem:1", prompt_fields))
    return offline, prompt


def through_last_target(ids, mask) -> tuple[list[int], list[bool]]:
    end = int(mask.nonzero()[0][-1]) + 1
    return ids[:end].tolist(), mask[:end].tolist()


def assert_same_sample(online: Sample, offline: Sample) -> None:
    """The same tokens and spans, up to each side's last target (off-policy chats go on with markup)."""
    assert (online.input_ids.tolist(), online.target_mask.tolist()) == through_last_target(
        offline.input_ids, offline.target_mask
    )
    assert online.teacher_input_ids is not None and offline.teacher_input_ids is not None
    assert (online.teacher_input_ids.tolist(), online.teacher_target_mask.tolist()) == through_last_target(
        offline.teacher_input_ids, offline.teacher_target_mask
    )
    assert online.target_spans.tolist() == offline.target_spans.tolist()
    assert online.teacher_target_spans.tolist() == offline.teacher_target_spans.tolist()


def test_a_chat_response_gets_the_teacher_tokens_and_spans_of_the_same_off_policy_chat(
    student, tokenizer
) -> None:
    offline, prompt = off_and_on_policy(student, tokenizer, chat(*QUESTION_TURNS, ("assistant", ANSWER)))
    # The on-policy prompt carries the teacher's own render of it, with the generation prompt, and no target.
    assert prompt.teacher_input_ids is not None and not prompt.teacher_target_mask.any()
    assert prompt.target_spans.tolist() == []
    online = with_response(prompt, generated(offline), 4096, retokenizer(student, tokenizer))
    assert_same_sample(online, offline)
    aligned, targets, none = alignment_counts([online])
    assert 0 < aligned < targets and none == 0
    assert targets == offline.num_targets


QUESTION_TURNS = [(m["role"], m["content"]) for m in QUESTION["messages"]]


def test_a_plain_text_response_ends_with_the_teachers_eos_as_off_policy(student, tokenizer) -> None:
    fields = {"prompt": "What is the capital of France?", "response": " " + ANSWER}
    offline, prompt = off_and_on_policy(student, tokenizer, fields, PAIRS, apply_chat_template=False)
    plain = retokenizer(student, tokenizer, apply_chat_template=False)
    assert plain.turn.end == tokenizer.eos_token
    assert_same_sample(with_response(prompt, generated(offline), 4096, plain), offline)


def test_a_response_cut_at_max_length_has_no_end_of_turn_and_the_teacher_reads_only_its_text(
    student, tokenizer
) -> None:
    offline, prompt = off_and_on_policy(student, tokenizer, chat(*QUESTION_TURNS, ("assistant", ANSWER)))
    room = 6
    online = with_response(
        prompt, generated(offline), len(prompt.input_ids) + room, retokenizer(student, tokenizer)
    )
    assert online.num_targets == room and online.truncation
    text = student.decode(generated(offline)[:room])
    teacher_response = online.teacher_input_ids[len(prompt.teacher_input_ids) :].tolist()
    assert tokenizer.decode(teacher_response) == text
    assert tokenizer.eos_token_id not in teacher_response
    # Each side's spans stop where the cut text ends.
    assert online.target_spans.tolist()[-1][1] == len(text) == online.teacher_target_spans.tolist()[-1][1]


def test_the_teacher_template_writes_its_end_of_turn_after_the_content(tokenizer) -> None:
    turn = teacher_turn(tokenizer, DataSpec(train=CHATS), ChatFormat())
    assert (turn.lead, turn.end) == ("", "<|im_end|>")


E_ACUTE = "é".encode()


def test_a_character_split_over_tokens_is_owned_by_the_first_and_the_rest_cover_nothing() -> None:
    pieces = {1: b"caf", 2: E_ACUTE[:1], 3: E_ACUTE[1:], 4: b" au", 99: b""}
    response = student_response([1, 2, 3, 4, 99], pieces, special={99})
    assert response.text == "café au"
    assert response.spans == [(0, 3), (3, 4), (4, 4), (4, 7), (7, 8)]
    assert response.stopped


def test_a_response_cut_inside_a_character_ends_its_text_before_it() -> None:
    pieces = {1: b"caf", 2: E_ACUTE[:1], 3: E_ACUTE[1:]}
    response = student_response([1, 2], pieces, special=set())
    assert response.text == "caf" and not response.stopped
    assert response.spans == [(0, 3), (3, 3)]


def test_special_tokens_inside_a_response_stand_for_no_text() -> None:
    response = student_response([1, 7, 2], {1: b"a", 2: b"b"}, special={7})
    assert (response.text, response.spans, response.stopped) == ("ab", [(0, 1), (1, 1), (1, 2)], False)
