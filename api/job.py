"""The DistillationJob resource: the manifest users write, and the one way to read one.

`parse_job` turns a manifest (a dict, as from YAML) into a validated `DistillationJob` or raises
`InvalidJob` with one `Problem` per mistake, each naming the field path (`spec.rollout`) and the fix.
"""

import difflib
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from kubedistill.api.base import SpecModel, model_in
from kubedistill.api.rules import RULES, Problem
from kubedistill.api.spec import DistillationJobSpec
from kubedistill.api.status import DistillationJobStatus

GROUP = "kubedistill.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DistillationJob"
PLURAL = "distillationjobs"
SINGULAR = "distillationjob"
SHORT_NAMES = ("dj", "distill")

# A DNS-1123 label: the name is the value of the `kubedistill.io/job` label on every child, and label
# values are at most 63 characters. The children's own names are derived to fit KubeRay's shorter limit
# (kubedistill.operator.naming).
MAX_NAME_LENGTH = 63
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ObjectMeta(BaseModel):
    """The parts of Kubernetes metadata the job reads; the rest is kept as it is."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    namespace: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}

    @field_validator("name")
    @classmethod
    def _name_is_a_dns_label(cls, name: str) -> str:
        if len(name) > MAX_NAME_LENGTH:
            raise ValueError(f"at most {MAX_NAME_LENGTH} characters (it is a label value on every child)")
        if not re.match(NAME_PATTERN, name):
            raise ValueError(
                "must be a DNS label: lower-case letters, digits and '-', starting and ending with a "
                "letter or digit"
            )
        return name


class DistillationJob(SpecModel):
    api_version: Annotated[Literal["kubedistill.io/v1alpha1"], Field(alias="apiVersion")]
    kind: Literal["DistillationJob"]
    metadata: ObjectMeta
    spec: DistillationJobSpec
    status: DistillationJobStatus | None = None

    @model_validator(mode="after")
    def _cross_field_rules_hold(self) -> "DistillationJob":
        problems = [rule.problem for rule in RULES if not rule.holds(self.spec)]
        if problems:
            raise CrossFieldProblems(problems)
        return self

    @property
    def name(self) -> str:
        return self.metadata.name


class CrossFieldProblems(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


class SpecError(ValueError):
    """A setting that cannot work, found past validation (against the data, a tokenizer, a model's config):
    the user's to fix, named by its field path. Any other exception out of the runtime is a bug."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type["SpecError"], tuple[str, str]]:
        # Raised in a data-preparation worker process, it crosses back pickled; the default pickling would
        # call __init__ with the one formatted message.
        return SpecError, (self.field, self.message)


@dataclass
class InvalidJob(Exception):
    problems: list[Problem]

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


def parse_job(manifest: Any, *, check_plugin_names: bool = True) -> DistillationJob:
    """Validate a manifest; raise `InvalidJob` listing every problem by field path."""
    from kubedistill.api.spec import CHECK_PLUGIN_NAMES

    try:
        return DistillationJob.model_validate(manifest, context={CHECK_PLUGIN_NAMES: check_plugin_names})
    except ValidationError as error:
        raise InvalidJob(_problems_of(error)) from None


def _problems_of(error: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    for detail in error.errors(include_url=False):
        cause = detail.get("ctx", {}).get("error")
        if isinstance(cause, CrossFieldProblems):
            problems.extend(cause.problems)
            continue
        problems.append(Problem(_path_of(detail["loc"]), _message_of(detail)))
    return problems


def _path_of(loc: tuple[str | int, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(manifest)"


def _message_of(detail: ErrorDetails) -> str:
    if detail["type"] == "extra_forbidden":
        return _unknown_field_message(detail["loc"])
    if detail["type"] == "missing":
        return "required"
    message = detail["msg"]
    return message.removeprefix("Value error, ")


def _unknown_field_message(loc: tuple[str | int, ...]) -> str:
    known = _known_fields(loc[:-1])
    suggestion = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f"; did you mean {suggestion[0]!r}?" if suggestion else ""
    return f"unknown field{hint} (known: {', '.join(known)})" if known else f"unknown field{hint}"


def _known_fields(parent: tuple[str | int, ...]) -> list[str]:
    model: type[BaseModel] | None = DistillationJob
    for part in parent:
        if model is None or isinstance(part, int):
            continue
        model = _field_model(model, part)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _field_model(model: type[BaseModel], alias: str) -> type[BaseModel] | None:
    for name, field in model.model_fields.items():
        if alias in (name, field.alias):
            return model_in(field.annotation)
    return None
