"""`spec.generation`: the training responses are written by a teacher before training (black-box or
sequence-level distillation, EasyDistill's main path).

The prompts of `spec.data.train` go to the job's own teacher (`spec.teacher`, on its engines) or to an
OpenAI-compatible endpoint; the responses are written to `<output>/generated/<job>.jsonl`, and the student
then trains on that file (`mode: sft`, or `offPolicy` with the job's own teacher's hidden states on it).
"""

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

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
