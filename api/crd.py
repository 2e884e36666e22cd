"""The DistillationJob CustomResourceDefinition, derived from the pydantic models.

Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no `$ref`, no `anyOf` of different
types, `exclusiveMinimum` as a boolean beside `minimum`. Pydantic emits JSON Schema 2020-12, so this module
translates. Optional fields are never `nullable`: the API server prunes an explicit `null` on a
non-nullable field, which then reads as "absent", exactly what `None` means in the models. Defaults are
not copied into the CRD (the API server would write them into stored objects); they are stated in the
descriptions and applied by the models.
"""

import copy
from typing import Any, cast

from kubedistill.api.job import (
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    NAME_PATTERN,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from kubedistill.api.rules import RULES
from kubedistill.api.spec import DistillationJobSpec
from kubedistill.api.status import DistillationJobStatus

Schema = dict[str, Any]

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
    {"name": "Prepared", "type": "integer", "jsonPath": ".status.preparedRecords", "priority": 1},
    {"name": "Generated", "type": "integer", "jsonPath": ".status.generatedPairs", "priority": 1},
    {"name": "Total", "type": "integer", "jsonPath": ".status.totalSteps", "priority": 1},
    {"name": "Loss", "type": "number", "jsonPath": ".status.loss"},
    {"name": "Step-Time", "type": "number", "jsonPath": ".status.stepTimeSeconds"},
    {"name": "Tokens/s", "type": "number", "jsonPath": ".status.tokensPerSecond", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    spec_schema = structural_schema(DistillationJobSpec.model_json_schema(by_alias=True))
    spec_schema["x-kubernetes-validations"] = [
        {"rule": rule.cel, "message": rule.message, "fieldPath": f".{rule.field}"} for rule in RULES
    ]
    status_schema = structural_schema(DistillationJobStatus.model_json_schema(by_alias=True))
    conditions = status_schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    root: Schema = {
        "type": "object",
        "description": "A knowledge-distillation job: a teacher, a student, data and how to train.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                "message": f"metadata.name: at most {MAX_NAME_LENGTH} characters "
                "(it is a label value on every child)",
            },
            {
                "rule": f"self.metadata.name.matches('{NAME_PATTERN}')",
                "message": "metadata.name: must be a DNS label (lower-case letters, digits and '-', "
                "starting and ending with a letter or digit)",
            },
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "kubedistill", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["all", "kubedistill"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def structural_schema(json_schema: Schema) -> Schema:
    definitions = json_schema.get("$defs", {})
    return _translate(json_schema, definitions)


def _translate(node: Schema, definitions: dict[str, Schema]) -> Schema:
    node = _resolve(node, definitions)
    description = node.get("description")
    default = node.get("default", _NO_DEFAULT)
    out: Schema = {}

    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {
            name: _translate(child, definitions) for name, child in node["properties"].items()
        }
        if node.get("required"):
            out["required"] = list(node["required"])
    elif node.get("type") == "object":
        out["type"] = "object"
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _translate(cast("dict[str, Any]", extra), definitions)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif node.get("type") == "array":
        out["type"] = "array"
        out["items"] = _translate(node.get("items", {}), definitions)
        for key in ("minItems", "maxItems"):
            if key in node:
                out[key] = node[key]
    elif "enum" in node:
        out["type"] = "string"
        out["enum"] = list(node["enum"])
    elif "const" in node:
        out["type"] = "string"
        out["enum"] = [node["const"]]
    elif node.get("type") in ("string", "integer", "number", "boolean"):
        out["type"] = node["type"]
        for key in ("minLength", "maxLength", "pattern", "minimum", "maximum"):
            if key in node:
                out[key] = node[key]
        for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if exclusive in node:
                out[inclusive] = node[exclusive]
                out[exclusive] = True
    elif node.get(PRESERVE_UNKNOWN):
        out[PRESERVE_UNKNOWN] = True
    else:
        raise ValueError(f"no structural translation for schema node {node!r}")

    text = " ".join((description or "").split())
    if default not in (_NO_DEFAULT, None, []) and not isinstance(default, dict):
        text = f"{text} Default: {_describe(default)}.".strip()
    if text:
        out["description"] = text
    return out


_NO_DEFAULT = object()
PRESERVE_UNKNOWN = "x-kubernetes-preserve-unknown-fields"
"""A value of any JSON type (a node without a type of its own, which a structural schema allows only so)."""


def _resolve(node: Schema, definitions: dict[str, Schema]) -> Schema:
    """Inline `$ref`s and drop the `null` branch of `X | None`, keeping the referring node's description."""
    node = dict(node)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"a union of several types cannot be structural: {branches!r}")
        node = {**_resolve(branches[0], definitions), **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**_resolve(node.pop("allOf")[0], definitions), **node}
    if "$ref" in node:
        target = copy.deepcopy(definitions[node.pop("$ref").rsplit("/", 1)[-1]])
        node = {**_resolve(target, definitions), **node}
    return node


def _describe(default: Any) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, list):
        return "[" + ", ".join(_describe(v) for v in cast("list[Any]", default)) + "]"
    return str(default)


CRD_HEADER = "# Generated from the pydantic spec in api/ by `make crds` (`kubedistill crd`). Do not edit.\n"


def render_crd_yaml() -> str:
    import yaml

    return CRD_HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=110, allow_unicode=True)
