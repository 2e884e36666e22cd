"""The API server's treatment of a custom resource by its CRD's structural schema, on create and update:
unknown fields pruned (unless `x-kubernetes-preserve-unknown-fields`), defaults applied, then the schema and
its CEL rules validated, and a violation answered 422 Invalid.

As kube-apiserver's apiextensions server does it (staging/src/k8s.io/apiextensions-apiserver,
`pkg/apiserver/schema/pruning`, `.../defaulting`, `.../validation`); the schema and CEL checks are those
of tests/api/crd_check.py (jsonschema with OpenAPI v3's draft-4 semantics, cel-python), on the generated
CRD (`crds/` is the same, tests/api/test_crd.py checks).
"""

import functools
import json
from typing import Any

from tests.api import crd_check

SCHEMA = crd_check.SCHEMA


def pruned_and_defaulted(value: Any, schema: dict[str, Any] = SCHEMA) -> Any:
    """`value` with the fields its schema does not know dropped and its defaults filled in."""
    if isinstance(value, list):
        return [pruned_and_defaulted(item, schema.get("items", {})) for item in value]
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    properties = schema.get("properties")
    if properties is None:
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return {key: pruned_and_defaulted(item, extra) for key, item in value.items()}
        return value
    kept = {
        key: pruned_and_defaulted(item, properties[key]) for key, item in value.items() if key in properties
    }
    for key, child in properties.items():
        if key not in kept and "default" in child:
            kept[key] = child["default"]
    return kept


def problems(obj: dict[str, Any], *, cel_rules: bool = True) -> list[str]:
    """What the API server would reject `obj` for: `path: message`, one a problem."""
    found = crd_check.schema_errors(obj)
    if cel_rules:
        # The rules read only the name and the spec (see the CRD); cel-python takes ~0.3 s an object, and
        # most writes (status, annotations, finalizers) change neither.
        inputs = {"metadata": {"name": obj.get("metadata", {}).get("name")}, "spec": obj.get("spec", {})}
        found.extend(_cel_violations(json.dumps(inputs, sort_keys=True)))
    return found


@functools.lru_cache(maxsize=1024)
def _cel_violations(inputs: str) -> tuple[str, ...]:
    return tuple(crd_check.cel_violations(json.loads(inputs)))


def merge_patch_between(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch_between(old[key], value)
    return patch
