"""The DistillationJob manifest: defaults, camelCase, and one clear message per mistake."""

import pytest

from kubedistill.api import InvalidJob, Mode, parse_job
from kubedistill.api.spec import Backend
from tests.api.manifests import BAD_MANIFESTS, BASE, Bad, apply_changes


def test_a_minimal_manifest_gets_kdflow_defaults() -> None:
    job = parse_job(BASE)
    assert job.spec.mode is Mode.OFF_POLICY
    assert job.spec.distillation.loss == "fkl"
    assert job.spec.distillation.kd_ratio == 0.5
    assert job.spec.training.learning_rate == 1.0e-6
    assert job.spec.training.adam_betas == [0.9, 0.98]
    assert job.spec.teacher.backend is Backend.AUTO
    assert job.spec.teacher.mem_fraction_static == 0.4


def test_yaml_uses_camel_case_and_round_trips() -> None:
    job = parse_job(BASE)
    dumped = job.model_dump(mode="json", exclude_none=True)
    assert dumped["spec"]["teacher"]["tensorParallel"] == 8
    assert "tensor_parallel" not in dumped["spec"]["teacher"]
    assert parse_job(dumped) == job


@pytest.mark.parametrize("bad", BAD_MANIFESTS, ids=lambda bad: bad.id)
def test_bad_manifest_is_rejected_naming_the_field(bad: Bad) -> None:
    with pytest.raises(InvalidJob) as raised:
        parse_job(apply_changes(bad.base, bad.changes))
    paths = [problem.path for problem in raised.value.problems]
    assert bad.field in paths, f"{bad.field} not among {paths}: {raised.value}"


def test_the_bad_manifest_table_is_large_and_has_unique_ids() -> None:
    assert len(BAD_MANIFESTS) >= 40
    assert len({bad.id for bad in BAD_MANIFESTS}) == len(BAD_MANIFESTS)


def test_a_typo_suggests_the_field_that_was_meant() -> None:
    with pytest.raises(InvalidJob) as raised:
        parse_job(apply_changes(BASE, {"spec.teacher.tensorParalel": 8}))
    assert "did you mean 'tensorParallel'?" in str(raised.value)


def test_an_unknown_loss_lists_the_known_ones() -> None:
    with pytest.raises(InvalidJob) as raised:
        parse_job(apply_changes(BASE, {"spec.distillation.loss": "kl"}))
    listed = str(raised.value).split("known: ")[1].split(", ")
    assert {"akl", "fkl", "jsd", "rkl", "skl", "srkl", "tvd"} <= set(listed)


def test_plugin_names_are_left_to_the_runtime_when_asked() -> None:
    manifest = apply_changes(BASE, {"spec.distillation.loss": "my-plugin-loss"})
    assert parse_job(manifest, check_plugin_names=False).spec.distillation.loss == "my-plugin-loss"


def test_every_problem_is_reported_not_just_the_first() -> None:
    manifest = apply_changes(BASE, {"spec.mode": "onPolicy", "spec.data.promptMaxLength": 8192})
    with pytest.raises(InvalidJob) as raised:
        parse_job(manifest)
    assert {p.path for p in raised.value.problems} == {"spec.rollout", "spec.data.promptMaxLength"}


def test_cross_field_messages_say_what_to_do() -> None:
    with pytest.raises(InvalidJob) as raised:
        parse_job(apply_changes(BASE, {"spec.mode": "onPolicy"}))
    assert str(raised.value) == "spec.rollout: required when spec.mode is onPolicy"


def test_explicit_null_means_the_same_as_absent() -> None:
    manifest = apply_changes(BASE, {"spec.training.maxSteps": None, "spec.data.eval": None})
    assert parse_job(manifest) == parse_job(BASE)
