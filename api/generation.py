"""`spec.generation`: the training responses are written by a teacher before training (black-box or
sequence-level distillation, EasyDistill's main path).

The prompts of `spec.data.train` go to the job's own teacher (`spec.teacher`, on its engines) or to an
OpenAI-compatible endpoint; the responses are written to `<output>/generated/<job>.jsonl`, and the student
then trains on that file (`mode: sft`, or `offPolicy` with the job's own teacher's hidden states on it).
"""

import string
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator

from kubedistill.api.base import SpecModel

if TYPE_CHECKING:
    from kubedistill.api.spec import DistillationJobSpec

EnvVarName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class SecretKeyRef(SpecModel):
    name: Annotated[str, Field(min_length=1)]
    """Name of the Secret, in the job's namespace."""
    key: Annotated[str, Field(min_length=1)]
    """Key of the API key within the Secret."""


class ApiKeySpec(SpecModel):
    env: EnvVarName = "OPENAI_API_KEY"
    """Environment variable the API key is read from (sent as `Authorization: Bearer`); it must be set where
    the job runs."""
    secret_key_ref: SecretKeyRef | None = None
    """On Kubernetes: the Secret key the operator sets that variable from on the Ray pods (the key itself
    never appears in the manifest, the ConfigMap, the status or the logs)."""


class EndpointSpec(SpecModel):
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?/v1/?$")]
    """Base URL of an OpenAI-compatible API, ending in /v1; requests go to <baseUrl>/chat/completions."""
    model: Annotated[str, Field(min_length=1)]
    """Model name the endpoint serves (the request's `model`)."""
    api_key: ApiKeySpec | None = None
    """Where the API key comes from; absent: requests carry no Authorization header."""
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 8
    """Requests in flight at once."""
    max_retries: Annotated[int, Field(ge=0)] = 5
    """Retries of a request answered 429 or 5xx, or that could not connect or timed out (exponential
    backoff with jitter, honouring Retry-After); a request still failing is recorded as skipped."""
    timeout_seconds: Annotated[float, Field(gt=0.0)] | None = None
    """Limit on one answer, from its request sent to its response read (the wait for a connection and the
    connect itself are not counted); unset: 60 s plus 0.1 s per maxNewTokens token (a teacher writing at
    least 10 tokens a second), since a reasoning teacher's long answers take minutes."""


class StepKind(StrEnum):
    """What a step of the generation phase makes (EasyDistill's data-synthesis operators)."""

    INSTRUCTION_EXPANSION = "instructionExpansion"
    INSTRUCTION_REFINEMENT = "instructionRefinement"
    CHAIN_OF_THOUGHT = "chainOfThought"
    LONG_TO_SHORT = "longToShort"
    SHORT_TO_LONG = "shortToLong"
    JUDGE = "judge"


INSTRUCTION_STEPS = (StepKind.INSTRUCTION_EXPANSION, StepKind.INSTRUCTION_REFINEMENT)
"""Steps on the prompts: they run, in their order, before the answers are generated."""
ANSWER_STEPS = (StepKind.LONG_TO_SHORT, StepKind.SHORT_TO_LONG, StepKind.JUDGE)
"""Steps on the (prompt, answer) records: they run, in their order, after the answers are generated."""

PLACEHOLDERS: dict[StepKind, tuple[str, ...]] = {
    StepKind.INSTRUCTION_EXPANSION: ("examples",),
    StepKind.INSTRUCTION_REFINEMENT: ("instruction",),
    StepKind.CHAIN_OF_THOUGHT: ("instruction",),
    StepKind.LONG_TO_SHORT: ("instruction", "answer"),
    StepKind.SHORT_TO_LONG: ("instruction", "answer"),
    StepKind.JUDGE: ("instruction", "answer"),
}
"""The named placeholders a kind's template may use; the last one it must use (what the step works on)."""

TEMPLATE_PATTERN = r"^([^{}]|\{\{|\}\}|\{(examples|instruction|answer)\})*$"
"""A template: text, `{{`/`}}` for a literal brace, and the placeholders `{examples}`, `{instruction}`,
`{answer}` (Python's str.format with names only)."""

MAX_SCORE = 9
"""The judge's scale, 0 to 9: EasyDistill's judge prompts' (`easydistill/eval/data_eval.py:84-157`, before
2.0)."""


class ScoreFrom(StrEnum):
    """How a judge's score is read from its reply."""

    TEXT = "text"
    """The integer in `<score>N</score>` (EasyDistill's `extract_score`); a reply without one is unscored."""
    LOGPROBS = "logprobs"
    """The expected digit at the first digit the judge writes, over the digits among its top-20 tokens there
    (`logprobs`/`top_logprobs`: vLLM and SGLang serve them, transformers serve ignores them): a score
    between two integers, that reads the judge's doubt too."""


class GenerationStep(SpecModel):
    kind: StepKind
    """instructionExpansion (new prompts like the seeds), instructionRefinement (each prompt rewritten in more
    detail), chainOfThought (the answers are asked for with reasoning), longToShort and shortToLong (each
    answer's reasoning rewritten shorter or longer), or judge (records scored under threshold dropped)."""
    template: Annotated[str, Field(min_length=1, json_schema_extra={"pattern": TEMPLATE_PATTERN})] | None = (
        None
    )
    """The user message the teacher is sent, with named placeholders: `{examples}` (instructionExpansion:
    the seed and other prompts as in-context examples), `{instruction}` (the prompt's last user message),
    `{answer}` (the answer, a reasoning teacher's thinking first); `{{`/`}}` for a literal brace. Unset (and
    no templateFile): EasyDistill's prompt for the kind."""
    template_file: Annotated[str, Field(min_length=1)] | None = None
    """The template read from this file (a path inside the pods, e.g. a mounted ConfigMap), instead of
    template; checked before any actor starts."""
    new_per_seed: Annotated[int, Field(ge=1)] = 1
    """instructionExpansion: new prompts asked for per prompt of spec.data.train (EasyDistill's
    num_output_samples over the whole set); the seeds stay."""
    examples: Annotated[int, Field(ge=1)] = 3
    """instructionExpansion: prompts shown as in-context examples, the seed first and others drawn
    (EasyDistill's num_in_context_samples)."""
    answer_tag: Annotated[str, Field(pattern=r"^([A-Za-z][A-Za-z0-9_-]*)?$")] = "answer"
    """instructionExpansion and instructionRefinement: the new prompt is the text inside
    `<answerTag>...</answerTag>` of the reply, which EasyDistill's prompts ask for; a reply without it is
    skipped (noAnswerTag). Empty: the whole reply."""
    threshold: Annotated[float, Field(ge=0.0, le=MAX_SCORE)] | None = None
    """judge (required): records scored below it are dropped (belowThreshold); scores run from 0 to 9."""
    score_from: ScoreFrom = ScoreFrom.TEXT
    """judge: read the score from the reply's text, or as the expected digit from its log-probabilities
    (needs spec.generation.endpoint)."""

    @field_validator("template")
    @classmethod
    def _known_placeholders(cls, template: str | None) -> str | None:
        if template is not None:
            placeholders(template)
        return template


def placeholders(template: str) -> set[str]:
    """The placeholders a template uses; a ValueError naming what is not one (an unknown name, a format
    spec, a lone brace)."""
    known = {name for names in PLACEHOLDERS.values() for name in names}
    try:
        fields = [
            (name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
        ]
    except ValueError as error:
        raise ValueError(f"{error} (write {{{{ or }}}} for a literal brace)") from None
    used: set[str] = set()
    for name, spec, conversion in fields:
        if name is None:
            continue
        if name not in known or spec or conversion:
            written = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            allowed = ", ".join("{" + n + "}" for n in sorted(known))
            raise ValueError(
                f"unknown placeholder {{{written}}}; a template may use {allowed}, and {{{{ or }}}} for a "
                "literal brace"
            )
        used.add(name)
    return used


def template_fits(kind: StepKind, template: str) -> bool:
    """A template uses what its kind works on and no placeholder of another kind (the rule of
    spec.generation.steps; written over `contains`, as its CEL twin is)."""
    allowed = PLACEHOLDERS[kind]
    return f"{{{allowed[-1]}}}" in template and not any(
        f"{{{name}}}" in template for names in PLACEHOLDERS.values() for name in names if name not in allowed
    )


class GenerationSpec(SpecModel):
    endpoint: EndpointSpec | None = None
    """An OpenAI-compatible endpoint writes the responses; absent: the job's own teacher (spec.teacher) does,
    on its engines (SGLang on GPUs, transformers otherwise)."""
    samples_per_prompt: Annotated[int, Field(ge=1)] = 1
    """Responses generated per prompt; each becomes a training record."""
    max_new_tokens: Annotated[int, Field(ge=1)] = 1024
    """Longest response generated (sent to an endpoint as `max_completion_tokens`, its reasoning included)."""
    temperature: Annotated[float, Field(ge=0.0)] | None = None
    """Sampling temperature; 0 decodes greedily. Unset: not sent to an endpoint, which samples at its model's
    default (OpenAI's reasoning models refuse any other); the job's own teacher samples at 1.0."""
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    """Nucleus-sampling probability mass. Unset: not sent to an endpoint; the job's own teacher uses 1.0."""
    seed: Annotated[int, Field(ge=0)] | None = None
    """Sampling seed (sent to an endpoint as `seed`); unset: spec.training.seed."""
    keep_truncated: bool = False
    """Keep responses cut off at maxNewTokens (finish_reason length) as training records; by default they
    are skipped and counted, since a cut-off answer teaches the student to stop mid-sentence."""
    keep_reasoning: bool = True
    """Keep a reasoning teacher's thinking (an endpoint's `reasoning_content` or vLLM's `reasoning`) as the
    generated assistant message's `reasoning_content`, which chat templates such as Qwen3's render; false
    trains on the answers alone."""
    top_logprobs: Annotated[int, Field(ge=1, le=20)] | None = None
    """Ask the endpoint for the log-probabilities of its k most likely tokens at every response token
    (`logprobs: true, top_logprobs: k`; OpenAI allows up to 20) and keep them with each record, mapped to the
    student's token ids, as sparse targets (`sparse_kd_loss`: the top k plus the tail's mass). The student
    must share the endpoint model's vocabulary: a response whose tokens the student's tokenizer does not
    write the same way is skipped as `unmapped`. Unset: only the text is kept (black-box KD)."""
    score_answers: bool = False
    """Keep spec.data.train's own answers instead of generating new ones: the endpoint scores each record's
    last assistant message, rendered with the student's chat template, and returns its top-k
    log-probabilities at every answer token (`POST <baseUrl>/completions` with the token ids as the prompt,
    `echo: true, logprobs: topLogprobs, max_tokens: 1`; vLLM and SGLang serve it), kept as with topLogprobs.
    Needs topLogprobs and one sample per prompt; every record must end in one assistant answer."""
    steps: list[GenerationStep] = []
    """EasyDistill's data synthesis, each step a file of its own under <output>/generated/, resumed, counted
    and skipped as the answers are: instruction steps (instructionExpansion, instructionRefinement) run in
    their order on spec.data.train's prompts before the answers are generated (chainOfThought: asked with its
    template), answer steps (longToShort, shortToLong, judge) in their order on the answers after; the
    student trains on the last one's records."""
    min_kept_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    """Fewest (prompt, sample) pairs, as a share of all, that must become training records; below it the
    phase fails naming the skipped file and the commonest reason instead of training on what is left."""


OWN_TEACHER_TEMPERATURE = 1.0
"""The job's own teacher's temperature and top_p when spec.generation leaves them unset."""
OWN_TEACHER_TOP_P = 1.0


def teacher_generates(spec: "DistillationJobSpec") -> bool:
    """The job's own teacher writes the training responses (so it runs even when spec.mode is sft)."""
    return spec.generation is not None and spec.generation.endpoint is None


def runs_teacher(spec: "DistillationJobSpec") -> bool:
    """Teacher engines run in the job: to give hidden states (every mode but sft and preference, whose
    teacher only writes answers), or to generate."""
    return spec.mode not in ("sft", "preference") or teacher_generates(spec)


def answer_timeout_seconds(endpoint: EndpointSpec, max_new_tokens: int) -> float:
    """spec.generation.endpoint.timeoutSeconds, or its default derived from maxNewTokens."""
    if endpoint.timeout_seconds is not None:
        return endpoint.timeout_seconds
    return 60.0 + max_new_tokens / 10.0
