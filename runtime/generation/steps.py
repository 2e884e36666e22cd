"""The steps of spec.generation (EasyDistill's data synthesis) as pure functions: each step's template, what
the teacher is asked for each item, and what its reply makes of the item (a new prompt, a rewritten answer,
a score), or why it is skipped.

The default templates are EasyDistill's, from the version whose operators live in `easydistill/synthesis/`
(modelscope/easydistill before 2.0, commit 44f564c): `configs/instruction_expansion_api.json:13`,
`configs/instruction_refinement_api.json:11`, `configs/cot_generation_api.json:11` (sent as the prompt, a
newline, then the instruction: `easydistill/synthesis/instruct_synthesis.py:55,154`, `cot_synthesis.py:41`),
`configs/cot_long2short_api.json:11` and `configs/cot_short2long_api.json:11` (sent as
`cot_synthesis.py:120,205` format them), and the judge's the helpfulness prompt of `easydistill/eval/
data_eval.py:103-120` with its `<score>` reading (`data_eval.py:159-163`).
"""

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubedistill.api.generation import (
    MAX_SCORE,
    PLACEHOLDERS,
    GenerationStep,
    ScoreFrom,
    StepKind,
    placeholders,
)
from kubedistill.runtime.data.chat import Message
from kubedistill.runtime.generation.logprobs import TokenLogprobs
from kubedistill.runtime.generation.prompts import Prompt

_EXPANSION = (
    "Assume you are a data synthesis expert. Given a few instructions as in-context examples, you should "
    "generate a new instruction similar to the examples to support the training of large language models. "
    "You should place your answer enclosed within <answer></answer> tags. The examples are as follows:\n"
    "{examples}"
)
_REFINEMENT = (
    "Assume you are a prompt re-writing expert. Given an instruction as input, you should generate a new "
    "instruction semantically similar to the input to support the training of large language models. "
    "Transform the input raw prompt into a detailed prompt that comprehensively captures the user\u2019s "
    "request. Make sure to maintain the original intent while significantly enhancing clarity and depth. You "
    "should place your answer enclosed within <answer></answer> tags. The input prompt is as follows:\n"
    "{instruction}"
)
_CHAIN_OF_THOUGHT = (
    "Your role as an assistant involves thoroughly exploring questions through a systematic long thinking "
    "process before providing the final precise and accurate solutions. This requires engaging in a "
    "comprehensive cycle of analysis, summarizing, exploration, reassessment, reflection, backtracing, and "
    "iteration to develop well-considered thinking process. Please structure your response into two main "
    "sections: Thought and Solution. In the Thought section, detail your reasoning process using the "
    "specified format: <|begin_of_thought|> {{thought with steps separated with '\\n\\n'}} "
    "<|end_of_thought|> Each step should include detailed considerations such as analisying questions, "
    "summarizing relevant findings, brainstorming new ideas, verifying the accuracy of the current steps, "
    "refining any errors, and revisiting previous steps. In the Solution section, based on various attempts, "
    "explorations, and reflections from the Thought section, systematically present the final solution that "
    "you deem correct. The solution should remain a logical, accurate, concise expression style and detail "
    "necessary step needed to reach the conclusion, formatted as follows: <|begin_of_solution|> {{final "
    "formatted, precise, and clear solution}} <|end_of_solution|> Now, try to solve the following question "
    "through the above guidelines:\n{instruction}"
)
_LONG_TO_SHORT = (
    "You are a helpful assistant who is highly skilled at simplifying reasoning processes. Given a problem, "
    "its answer and its reasoning process, your task is to simplify the reasoning process so that a small "
    "language model (e.g., a 7B model) can reliably follow the steps to solve the problem. If the original "
    "reasoning process is divided into multiple steps separated by two newline characters (\\n\\n), your "
    "output must preserve this formatting. You must output ONLY the simplified reasoning process with no "
    "additional explanation or commentary. Simplify the reasoning process for the problem below.\n\n"
    "Problem:\n{instruction}\n\nAnswer:\n{answer}\n\nSimplified Reasoning Process:"
)
_SHORT_TO_LONG = (
    "You are a helpful assistant who is highly skilled at extending reasoning processes. Given a problem "
    ",its answer and its reasoning process, your task is to extend the reasoning process by adding necessary "
    "details and intermediate steps, so that a small language model (e.g., a 7B model) can follow the "
    "extended reasoning process to solve the problem. If the original reasoning process is divided into "
    "multiple steps separated by two newline characters (\\n\\n), your output must preserve this "
    "formatting. You must output ONLY the extended reasoning process with no additional explanation or "
    "commentary. Extend the reasoning process for the problem below.\n\nProblem:\n{instruction}\n\n"
    "Answer:\n{answer}\n\nExtended Reasoning Process:"
)
_JUDGE = (
    "You are an expert judge tasked with evaluating the Helpfulness of a response generated by an "
    "instruction-following model for a given user instruction. Helpfulness Evaluation Focus: Assess how well "
    "the response assists the user in accomplishing  their goal, providing clear, actionable, and relevant "
    "information or guidance. A helpful response should be easy to understand and effectively address the "
    "user\u2019s needs without unnecessary confusion or missing key details.\n"
    "Scoring Guidelines (0-9):\n"
    "0-1 Not helpful; response is irrelevant, confusing, or fails to address the instruction.\n"
    "2-3 Slightly helpful; responds partially but lacks clarity or important elements.\n"
    "4-5 Moderately helpful; response addresses the instruction but may be incomplete or somewhat unclear.\n"
    "6-7 Mostly helpful; provides clear and relevant information that adequately assists the user.\n"
    "8-9 Extremely helpful; offers comprehensive, clear, and precise guidance or information that fully "
    "satisfies the user\u2019s instruction.\n"
    "Given Instruction and Model Response, you will:\n"
    "1. Analyze the Helpfulness of the response\n"
    "2. Determine a score using the above criteria\n"
    "3. Output ONLY the integer score (0-9), place your score in <score></score>\n"
    "Instruction: {instruction}\n"
    "Response: {answer}"
)

DEFAULT_TEMPLATES: Mapping[StepKind, str] = {
    StepKind.INSTRUCTION_EXPANSION: _EXPANSION,
    StepKind.INSTRUCTION_REFINEMENT: _REFINEMENT,
    StepKind.CHAIN_OF_THOUGHT: _CHAIN_OF_THOUGHT,
    StepKind.LONG_TO_SHORT: _LONG_TO_SHORT,
    StepKind.SHORT_TO_LONG: _SHORT_TO_LONG,
    StepKind.JUDGE: _JUDGE,
}

NO_ANSWER_TAG = "noAnswerTag"
"""The skip reason of an instruction step's reply without its `<answerTag>`."""
UNSCORED = "unscored"
"""The skip reason of a judge's reply the score cannot be read from."""
BELOW_THRESHOLD = "belowThreshold"
"""The skip reason of a record the judge scored below the threshold."""
NO_TEXT = "noText"
"""The skip reason of a record whose answer has no text to rewrite or judge (a tool call)."""

JUDGE_TOP_LOGPROBS = 20
"""Top tokens a judge reading logprobs asks for at each position: OpenAI's most."""


class TemplateProblem(ValueError):
    """A step's template file cannot be used; the message names the field."""


def step_template(step: GenerationStep, index: int) -> str:
    """The template the step sends: its own, its file's (checked as a manifest's would be), or the default."""
    if step.template is not None:
        return step.template
    if step.template_file is None:
        return DEFAULT_TEMPLATES[step.kind]
    field = f"spec.generation.steps[{index}].templateFile"
    try:
        text = Path(step.template_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise TemplateProblem(f"{field}: cannot read {step.template_file} ({reason})") from None
    try:
        used = placeholders(text)
    except ValueError as error:
        raise TemplateProblem(f"{field}: {step.template_file}: {error}") from None
    wanted = PLACEHOLDERS[step.kind]
    if wanted[-1] not in used or used - set(wanted):
        allowed = " and ".join("{" + name + "}" for name in wanted)
        raise TemplateProblem(
            f"{field}: {step.template_file} must use {{{wanted[-1]}}} and no placeholder but {allowed}, as "
            f"a {step.kind} step's template"
        )
    return text


def render(template: str, **values: str) -> list[Message]:
    """The one user message the teacher is sent."""
    return [{"role": "user", "content": template.format_map(values)}]


def instruction_of(prompt: Prompt) -> str:
    """The prompt's last user message as text (a list of parts: its text parts)."""
    return _text(prompt.messages[-1].get("content"))


def answer_of(prompt: Prompt) -> str:
    """The answer as text: a reasoning teacher's thinking, then its answer (one text, as EasyDistill's CoT
    answers are)."""
    answer = prompt.answer[-1] if prompt.answer else {}
    parts = [_text(answer.get("reasoning_content")), _text(answer.get("content"))]
    return "\n\n".join(part for part in parts if part)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


@dataclass(frozen=True)
class StepItem:
    """One request of a step: the key of its line, what it comes from, and what the teacher is sent."""

    id: str
    source: Prompt
    ask: list[Message]

    def as_prompt(self) -> Prompt:
        """The request as the generation phase's clients take it (the step's file is keyed by `id`)."""
        return Prompt(self.id, self.ask, self.source.source, self.source.carried)


def step_items(step: GenerationStep, template: str, inputs: Sequence[Prompt], seed: int) -> list[StepItem]:
    """What a step asks, one item per input (instructionExpansion asks newPerSeed samples of each: its seed
    and examples - 1 other prompts drawn for it, seeded so that a rerun asks the same)."""
    if step.kind != StepKind.INSTRUCTION_EXPANSION:
        return [
            StepItem(
                prompt.id,
                prompt,
                render(template, instruction=instruction_of(prompt), answer=answer_of(prompt)),
            )
            for prompt in inputs
        ]
    items = []
    for prompt in inputs:
        others = [other for other in inputs if other.id != prompt.id]
        drawn = random.Random(f"{seed}:{prompt.id}").sample(others, min(len(others), step.examples - 1))
        examples = "\n".join(instruction_of(example) for example in [prompt, *drawn])
        items.append(StepItem(prompt.id, prompt, render(template, examples=examples)))
    return items


def samples_of(step: GenerationStep) -> int:
    """Replies asked per item."""
    return step.new_per_seed if step.kind == StepKind.INSTRUCTION_EXPANSION else 1


def tagged(text: str, tag: str) -> str | None:
    """The text inside the first `<tag>...</tag>` (EasyDistill's `extract_answer`), stripped; None without."""
    found = re.search(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, re.DOTALL)
    return found.group(1).strip() if found else None


def text_score(text: str) -> int | None:
    """The integer in `<score>N</score>` (EasyDistill's `extract_score`), if on the 0-9 scale."""
    found = re.search(r"<score>\s*(\d+)\s*</score>", text)
    return int(found.group(1)) if found and int(found.group(1)) <= MAX_SCORE else None


_DIGITS = {str(digit).encode(): digit for digit in range(MAX_SCORE + 1)}


def expected_digit(tokens: Sequence[TokenLogprobs]) -> float | None:
    """At the first token the judge wrote that is a digit: the mean digit under the top tokens that are
    digits there, their probabilities renormalised (G-Eval's probability-weighted score, Liu et al. 2023,
    eq. 1); None when it wrote no digit."""
    for token in tokens:
        if token.token.strip() not in _DIGITS:
            continue
        weights: dict[int, float] = {}
        for text, logprob in token.top:
            digit = _DIGITS.get(text.strip())
            if digit is not None and digit not in weights:
                weights[digit] = math.exp(logprob)
        if not weights:
            weights[_DIGITS[token.token.strip()]] = 1.0
        return sum(digit * weight for digit, weight in weights.items()) / sum(weights.values())
    return None


@dataclass(frozen=True)
class Made:
    """What a reply makes of its item: the record's messages, or why it is skipped (and its detail)."""

    messages: list[Message] | None
    reason: str | None = None
    detail: str = ""
    score: float | None = None


def made_of(
    step: GenerationStep, item: StepItem, text: str, logprobs: Sequence[TokenLogprobs] | None = None
) -> Made:
    """The record a kept reply makes: a new prompt (instruction steps), the answer rewritten (longToShort,
    shortToLong), or the record itself when the judge scores it at or above the threshold."""
    source = item.source
    if step.kind in (StepKind.INSTRUCTION_EXPANSION, StepKind.INSTRUCTION_REFINEMENT):
        new = tagged(text, step.answer_tag) if step.answer_tag else text.strip()
        if not new:
            tag = f"<{step.answer_tag}>" if step.answer_tag else "text"
            return Made(None, NO_ANSWER_TAG, f"no {tag} in the reply: {text[:120]!r}")
        if step.kind == StepKind.INSTRUCTION_EXPANSION:
            return Made([{"role": "user", "content": new}])
        return Made([*source.messages[:-1], {**source.messages[-1], "content": new}])
    if not answer_of(source):
        return Made(None, NO_TEXT, "the answer has no text (a tool call)")
    if step.kind != StepKind.JUDGE:
        return Made([*source.messages, *source.answer[:-1], {"role": "assistant", "content": text.strip()}])
    assert step.threshold is not None, "a rule asks a judge for its threshold"
    score = expected_digit(logprobs or []) if step.score_from == ScoreFrom.LOGPROBS else text_score(text)
    if score is None:
        how = "no digit among its tokens" if step.score_from == ScoreFrom.LOGPROBS else "no <score>N</score>"
        return Made(None, UNSCORED, f"{how} in the reply: {text[:120]!r}", None)
    if score < step.threshold:
        return Made(None, BELOW_THRESHOLD, f"scored {score:g}, below {step.threshold:g}", score)
    return Made([*source.messages, *source.answer], score=score)
