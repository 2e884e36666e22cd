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
    timeout_seconds: Annotated[float, Field(gt=0.0)] = 120.0
    """Limit on one request, response included."""


class GenerationSpec(SpecModel):
    endpoint: EndpointSpec | None = None
    """An OpenAI-compatible endpoint writes the responses; absent: the job's own teacher (spec.teacher) does,
    on its engines (SGLang on GPUs, transformers otherwise)."""
    samples_per_prompt: Annotated[int, Field(ge=1)] = 1
    """Responses generated per prompt; each becomes a training record."""
    max_new_tokens: Annotated[int, Field(ge=1)] = 1024
    """Longest response generated."""
    temperature: Annotated[float, Field(ge=0.0)] = 0.7
    """Sampling temperature; 0 decodes greedily."""
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """Nucleus-sampling probability mass."""
    seed: Annotated[int, Field(ge=0)] | None = None
    """Sampling seed (sent to an endpoint as `seed`); unset: spec.training.seed."""
    keep_truncated: bool = False
    """Keep responses cut off at maxNewTokens (finish_reason length) as training records; by default they
    are skipped and counted, since a cut-off answer teaches the student to stop mid-sentence."""


def teacher_generates(spec: "DistillationJobSpec") -> bool:
    """The job's own teacher writes the training responses (so it runs even when spec.mode is sft)."""
    return spec.generation is not None and spec.generation.endpoint is None


def runs_teacher(spec: "DistillationJobSpec") -> bool:
    """Teacher engines run in the job: to give hidden states (every mode but sft), or to generate."""
    return spec.mode != "sft" or teacher_generates(spec)
