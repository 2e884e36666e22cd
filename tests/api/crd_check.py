"""What the API server does with a manifest, as far as it can be done without one: the structural schema
(jsonschema, draft 4 semantics as in OpenAPI v3), strict field validation (unknown fields), and the CEL rules
(cel-python)."""

import functools
from typing import Any

import celpy
import jsonschema

from kubedistill.api.crd import build_crd

CRD = build_crd()
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(SCHEMA)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def unknown_fields(manifest: Any, schema: dict[str, Any] = SCHEMA, path: str = "") -> list[str]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(manifest, dict) and "properties" in schema:
        for key, value in manifest.items():
            child = schema["properties"].get(key)
            where = f"{path}.{key}" if path else key
            if child is None:
                found.append(where)
            else:
                found.extend(unknown_fields(value, child, where))
    elif isinstance(manifest, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in manifest.items():
            found.extend(unknown_fields(value, schema["additionalProperties"], f"{path}.{key}"))
    elif isinstance(manifest, list) and "items" in schema:
        for i, item in enumerate(manifest):
            found.extend(unknown_fields(item, schema["items"], f"{path}[{i}]"))
    return found


_environment = celpy.Environment()


@functools.cache
def _program(rule: str) -> celpy.Runner:
    return _environment.program(_environment.compile(rule))


def cel_violations(manifest: dict[str, Any]) -> list[str]:
    """Messages of the CEL rules that fail (`fieldPath: message`), root rules on the whole object and spec
    rules on spec."""
    failed = []
    scopes = [(SCHEMA, manifest), (SCHEMA["properties"]["spec"], manifest.get("spec", {}))]
    for schema, scope in scopes:
        for rule in schema.get("x-kubernetes-validations", []):
            program = _program(rule["rule"])
            try:
                holds = program.evaluate({"self": celpy.json_to_cel(scope)})
            except celpy.CELEvalError as error:
                # The API server rejects an object whose rule cannot be evaluated (e.g. a division by a
                # zero that the schema's minimum also rejects).
                failed.append(f"{rule.get('fieldPath', '')}: evaluation error: {error.args[0]}")
                continue
            if not holds:
                failed.append(f"{rule.get('fieldPath', '')}: {rule['message']}")
    return failed
