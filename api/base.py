"""The base every spec model shares: camelCase in YAML, snake_case in Python, unknown fields rejected."""

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    """A part of the manifest.

    Field docstrings become the CRD's descriptions, so what `kubectl explain` prints and what the code
    documents are the same text.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
    )


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field's annotation holds (`X`, `X | None`, `list[X]`, `Annotated[X, ...]`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = model_in(argument)
        if found is not None:
            return found
    return None
