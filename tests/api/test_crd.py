"""The CRD is generated from the models, is structural, and rejects at `kubectl apply` what it can."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubedistill.api.crd import render_crd_yaml
from kubedistill.api.job import InvalidJob, parse_job
from kubedistill.api.manifest import load_documents
from tests.api.crd_check import CRD, SCHEMA, cel_violations, schema_errors, unknown_fields
from tests.api.manifests import (
    BAD_MANIFESTS,
    BASE,
    DELETE,
    ON_POLICY_ROLLOUT,
    PREFERENCE,
    PREFERENCE_PAIRS,
    SEVERAL_TEACHERS,
    TEACHERS,
    Bad,
    apply_changes,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "kubedistill.io_distillationjobs.yaml"
EXAMPLES = sorted(ROOT.glob("examples/**/*.yaml"))


def _jobs_in_examples() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.relative_to(ROOT)}#{i}", document)
        for path in EXAMPLES
        for i, document in enumerate(load_documents(path))
        if isinstance(document, dict) and document.get("kind") == "DistillationJob"
    ]


def test_the_checked_in_crd_is_the_generated_one() -> None:
    assert CRD_FILE.read_text(encoding="utf-8") == render_crd_yaml(), "stale CRD: run `make crds`"


def _walk(node: Any, path: str = "$"):
    yield path, node
    if isinstance(node, dict):
        for key, child in node.get("properties", {}).items():
            yield from _walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}.*")


@pytest.mark.parametrize("path,node", list(_walk(SCHEMA)), ids=lambda v: v if isinstance(v, str) else "")
def test_every_schema_node_is_structural(path: str, node: dict[str, Any]) -> None:
    # Kubernetes' structural schema rule 1 exempts a node that preserves unknown fields (a value of any type).
    assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields") is True, f"{path} has no type"
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "nullable", "default", "title", "$defs"):
        assert forbidden not in node, f"{path} has {forbidden}"
    if "exclusiveMinimum" in node:
        assert node["exclusiveMinimum"] is True and "minimum" in node


def test_the_crd_is_a_valid_apiextensions_v1_object() -> None:
    import kubernetes_validate

    kubernetes_validate.validate(CRD, "1.30.0", strict=True)


def test_the_crd_names_status_and_printer_columns() -> None:
    version = CRD["spec"]["versions"][0]
    assert CRD["spec"]["names"]["shortNames"] == ["dj", "distill"]
    assert version["subresources"] == {"status": {}}
    columns = [column["name"] for column in version["additionalPrinterColumns"] if "priority" not in column]
    assert columns == ["Phase", "Step", "Loss", "Step-Time", "Age"]


def test_examples_exist() -> None:
    assert len(_jobs_in_examples()) >= 3


@pytest.mark.parametrize("where,manifest", _jobs_in_examples(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_example_passes_the_model_and_the_crd(where: str, manifest: dict[str, Any]) -> None:
    parse_job(manifest)
    assert schema_errors(manifest) == []
    assert unknown_fields(manifest) == []
    assert cel_violations(manifest) == []


@pytest.mark.parametrize("bad", BAD_MANIFESTS, ids=lambda bad: bad.id)
def test_the_api_server_rejects_what_the_crd_can_check(bad: Bad) -> None:
    manifest = apply_changes(bad.base, bad.changes)
    rejections = {
        "schema": schema_errors(manifest),
        "unknown-field": unknown_fields(manifest),
        "cel": cel_violations(manifest),
    }
    if bad.crd is None:
        assert not any(rejections.values()), rejections
        return
    assert rejections[bad.crd], f"the CRD lets {bad.id} through"
    if bad.crd == "cel":
        assert not rejections["schema"], "a CEL-only case should be well typed"
        named = [message for message in rejections["cel"] if bad.field.removeprefix("spec") in message]
        assert named or bad.field.startswith("metadata"), rejections["cel"]


ON_POLICY_SELF_DISTILLATION = {
    "spec.mode": "selfDistillation",
    "spec.teacher.model": DELETE,
    "spec.rollout": {**ON_POLICY_ROLLOUT, "batchSize": 128},
}


@pytest.mark.parametrize(
    "teacher",
    [
        {"spec.data.train": {"path": "/d.jsonl", "teacherInputKey": "hint"}},
        {"spec.data.train": {"path": "/d.jsonl", "promptKey": "q", "teacherInputKey": "hint"}},
        {"spec.distillation": {"teacherUpdateFreq": 8}},
        {"spec.distillation": {"teacherEmaDecay": 0.99}},
    ],
    ids=["privileged-prompt", "prompt-records", "refreshed-teacher", "ema-teacher"],
)
def test_self_distillation_may_sample_its_own_responses(teacher: dict[str, Any]) -> None:
    """On-policy self-distillation: the student samples (spec.rollout), a teacher that differs from it, by
    its input or by lagging behind, scores; prompt-only records are enough, as for onPolicy."""
    manifest = apply_changes(BASE, ON_POLICY_SELF_DISTILLATION | teacher)
    assert cel_violations(manifest) == []
    spec = parse_job(manifest).spec
    assert spec.on_policy and spec.rollout.batch_size == 128


@pytest.mark.parametrize(
    "changes", [PREFERENCE, PREFERENCE_PAIRS], ids=["generated-pairs", "pairs-in-the-data"]
)
def test_preference_trains_on_pairs_it_generates_or_the_data_holds(changes: dict[str, Any]) -> None:
    """With spec.generation the teacher answers (chosen) and the student on rollout engines (rejected);
    without it the data holds the pairs, and neither a teacher nor rollout engines run."""
    manifest = apply_changes(BASE, changes)
    assert cel_violations(manifest) == []
    spec = parse_job(manifest).spec
    assert not spec.on_policy and spec.mode == "preference"


def test_self_distillation_without_a_rollout_section_trains_on_the_datasets_responses() -> None:
    manifest = apply_changes(BASE, {"spec.mode": "selfDistillation", "spec.teacher.model": DELETE})
    assert not parse_job(manifest).spec.on_policy


def test_several_teachers_each_on_all_the_students_gpus_may_take_turns_on_them() -> None:
    """Colocated, each teacher's engines cover the students' eight GPUs: 1 x 8, and 2 x 4."""
    teachers = [TEACHERS[0], {**TEACHERS[1], "replicas": 2}]
    manifest = apply_changes(
        BASE, {**SEVERAL_TEACHERS, "spec.teachers": teachers, "spec.cluster.colocate": True}
    )
    assert cel_violations(manifest) == []
    assert parse_job(manifest).spec.cluster.colocate


def test_each_cel_rule_agrees_with_its_python_twin_on_the_valid_base() -> None:
    assert cel_violations(BASE) == []
    parse_job(BASE)


@pytest.mark.parametrize("bad", [b for b in BAD_MANIFESTS if b.crd == "cel"], ids=lambda bad: bad.id)
def test_cel_and_python_reject_the_same_cross_field_mistakes(bad: Bad) -> None:
    manifest = apply_changes(bad.base, bad.changes)
    with pytest.raises(InvalidJob) as raised:
        parse_job(manifest)
    python_messages = sorted(p.message for p in raised.value.problems)
    cel_messages = sorted(m.split(": ", 1)[1] for m in cel_violations(manifest))
    if bad.field.startswith("metadata"):
        assert any(m.startswith("metadata.name") for m in cel_messages)
    else:
        assert python_messages == cel_messages


def test_the_crd_file_is_yaml_with_a_do_not_edit_header() -> None:
    text = CRD_FILE.read_text(encoding="utf-8")
    assert text.startswith("# Generated from the pydantic spec")
    assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"
