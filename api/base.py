"""The base every spec model shares: camelCase in YAML, snake_case in Python, unknown fields rejected."""

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
