"""The steps' pure parts: templates and their placeholders, what each item asks, and what a reply makes."""

import math
from pathlib import Path

import pytest

from kubedistill.api.generation import GenerationStep, StepKind, placeholders, template_fits
from kubedistill.runtime.generation.logprobs import TokenLogprobs
from kubedistill.runtime.generation.prompts import Prompt
from kubedistill.runtime.generation.steps import (
    DEFAULT_TEMPLATES,
    StepItem,
    TemplateProblem,
    expected_digit,
    made_of,
    step_items,
    step_template,
    text_score,
)


def _prompt(question: str, answer: str | None = None, reasoning: str | None = None) -> Prompt:
    reply = {
        "role": "assistant",
        "content": answer,
        **({"reasoning_content": reasoning} if reasoning else {}),
    }
    return Prompt(
        f"id-{question}",
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        f"train.jsonl:{question}",
        {},
        [reply] if answer is not None else [],
    )


@pytest.mark.parametrize("kind", list(StepKind))
def test_each_kinds_default_template_uses_what_it_works_on(kind: StepKind) -> None:
    assert template_fits(kind, DEFAULT_TEMPLATES[kind])
    rendered = DEFAULT_TEMPLATES[kind].format(examples="EX", instruction="INS", answer="ANS")
    assert "{" not in rendered.replace("{thought", "").replace("{final", ""), "every placeholder filled in"


def test_the_defaults_send_easydistills_prompts_as_it_does() -> None:
    refinement = DEFAULT_TEMPLATES[StepKind.INSTRUCTION_REFINEMENT].format(instruction="Count to three.")
    assert refinement.startswith("Assume you are a prompt re-writing expert.")
    assert refinement.endswith("The input prompt is as follows:\nCount to three.")
    cot = DEFAULT_TEMPLATES[StepKind.CHAIN_OF_THOUGHT].format(instruction="Q")
    assert "<|begin_of_thought|> {thought with steps separated with '\\n\\n'} <|end_of_thought|>" in cot
    shorter = DEFAULT_TEMPLATES[StepKind.LONG_TO_SHORT].format(instruction="Q", answer="A")
    assert shorter.endswith(
        "Simplify the reasoning process for the problem below.\n\nProblem:\nQ\n\nAnswer:\nA\n\n"
        "Simplified Reasoning Process:"
    )


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("Rate {answer} as {score}", "unknown placeholder {score}"),
        ("Rate {answer:>10}", "unknown placeholder {answer:>10}"),
        ("Rate {answer!r}", "unknown placeholder {answer!r}"),
        ("JSON: {", "Single '{' encountered in format string (write {{ or }} for a literal brace)"),
    ],
)
def test_a_template_with_anything_but_a_named_placeholder_is_refused(template: str, error: str) -> None:
    with pytest.raises(ValueError) as refused:
        placeholders(template)
    assert str(refused.value).startswith(error)


def test_a_template_file_is_read_and_checked_naming_the_step(tmp_path: Path) -> None:
    good = tmp_path / "judge.txt"
    good.write_text("Score {answer} to {instruction}, {{0-9}}")
    assert step_template(GenerationStep(kind=StepKind.JUDGE, threshold=5, template_file=str(good)), 2) == (
        good.read_text()
    )
    missing = GenerationStep(kind=StepKind.JUDGE, threshold=5, template_file=str(tmp_path / "none.txt"))
    with pytest.raises(TemplateProblem) as refused:
        step_template(missing, 2)
    where = tmp_path / "none.txt"
    assert str(refused.value) == (
        f"spec.generation.steps[2].templateFile: cannot read {where} (No such file or directory)"
    )
    good.write_text("Score {instruction}")
    with pytest.raises(TemplateProblem) as refused:
        step_template(GenerationStep(kind=StepKind.JUDGE, threshold=5, template_file=str(good)), 0)
    assert str(refused.value).startswith(f"spec.generation.steps[0].templateFile: {good} must use {{answer}}")


def test_expansion_shows_each_seed_first_with_others_drawn_the_same_way_on_a_rerun() -> None:
    seeds = [_prompt(question) for question in ("one", "two", "three", "four")]
    step = GenerationStep(kind=StepKind.INSTRUCTION_EXPANSION, examples=3)
    items = step_items(step, "Like:\n{examples}", seeds, seed=7)
    shown = [str(item.ask[0]["content"]).split("\n")[1:] for item in items]
    assert [lines[0] for lines in shown] == ["one", "two", "three", "four"]
    assert all(len(set(lines)) == 3 for lines in shown)
    assert items == step_items(step, "Like:\n{examples}", seeds, seed=7)
    assert items != step_items(step, "Like:\n{examples}", seeds, seed=8)


def test_an_answer_step_sends_the_question_and_the_answer_with_its_reasoning_first() -> None:
    step = GenerationStep(kind=StepKind.LONG_TO_SHORT)
    (item,) = step_items(step, "Q: {instruction}\nA: {answer}", [_prompt("two?", "2", "1 + 1")], seed=0)
    assert item.ask == [{"role": "user", "content": "Q: two?\nA: 1 + 1\n\n2"}]
    made = made_of(step, item, " 1+1=2, so 2. ")
    assert made.messages == [*item.source.messages, {"role": "assistant", "content": "1+1=2, so 2."}]


def _item(kind: StepKind, answer: str | None = None) -> StepItem:
    prompt = _prompt("Count to two.", answer)
    return StepItem(prompt.id, prompt, [])


def test_an_instruction_steps_new_prompt_is_inside_its_answer_tag_or_the_whole_reply() -> None:
    refine = GenerationStep(kind=StepKind.INSTRUCTION_REFINEMENT)
    made = made_of(refine, _item(refine.kind), "Here: <answer>\nCount from one to two.\n</answer>")
    assert made.messages is not None and made.messages[-1] == {
        "role": "user",
        "content": "Count from one to two.",
    }
    assert made.messages[0] == {"role": "system", "content": "Be brief."}, "the earlier turns stay"
    assert made_of(refine, _item(refine.kind), "Count from one to two.").reason == "noAnswerTag"
    expand = GenerationStep(kind=StepKind.INSTRUCTION_EXPANSION, answer_tag="")
    assert made_of(expand, _item(expand.kind), " Name a red fruit. ").messages == [
        {"role": "user", "content": "Name a red fruit."}
    ]


@pytest.mark.parametrize(
    ("reply", "score"),
    [("<score>7</score>", 7), ("Well. <score> 0 </score>", 0), ("<score>12</score>", None), ("7", None)],
)
def test_a_judges_text_score_is_the_integer_in_its_score_tags_on_the_0_to_9_scale(
    reply: str, score: int | None
) -> None:
    assert text_score(reply) == score


def _token(text: str, *top: tuple[str, float]) -> TokenLogprobs:
    return TokenLogprobs(text.encode(), math.log(top[0][1]), tuple((t.encode(), math.log(p)) for t, p in top))


def test_a_judges_logprob_score_is_the_expected_digit_where_it_first_writes_one() -> None:
    tokens = [
        _token("<", ("<", 0.9), ("5", 0.1)),
        _token("7", ("7", 0.6), ("8", 0.2), (" 9", 0.1), ("x", 0.1)),
    ]
    assert expected_digit(tokens) == pytest.approx((7 * 0.6 + 8 * 0.2 + 9 * 0.1) / 0.9)
    assert expected_digit([_token("3", ("x", 0.9))]) == 3, "the digit written, when no top token is one"
    assert expected_digit([_token("seven", ("seven", 1.0), ("7", 0.0001))]) is None


def test_a_judge_keeps_at_the_threshold_drops_below_it_and_skips_what_it_cannot_score() -> None:
    judge = GenerationStep(kind=StepKind.JUDGE, threshold=6)
    item = _item(judge.kind, "one two")
    kept = made_of(judge, item, "<score>6</score>")
    assert kept.messages == [*item.source.messages, *item.source.answer] and kept.score == 6
    assert (made_of(judge, item, "<score>5</score>").reason, made_of(judge, item, "great").reason) == (
        "belowThreshold",
        "unscored",
    )
    assert made_of(judge, _item(judge.kind, ""), "<score>9</score>").reason == "noText"
