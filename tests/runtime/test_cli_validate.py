"""`kubedistill validate` and `kubedistill crd`: what a user sees on the command line."""

from pathlib import Path

import yaml
from typer.testing import CliRunner

from kubedistill.api.crd import render_crd_yaml
from kubedistill.runtime.cli import app
from tests.api.manifests import BASE, apply_changes

runner = CliRunner()


def _write(path: Path, *documents: object) -> Path:
    path.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    return path


def test_a_valid_file_passes(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(_write(tmp_path / "job.yaml", BASE))])
    assert result.exit_code == 0
    assert "valid (qwen3-32b-to-4b)" in result.output


def test_each_problem_is_printed_as_file_field_message(tmp_path: Path) -> None:
    bad = _write(
        tmp_path / "bad.yaml", apply_changes(BASE, {"spec.mode": "onPolicy", "spec.distillation.kdRatio": 2})
    )
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert f"{bad}: spec.distillation.kdRatio: Input should be less than or equal to 1" in lines
    assert len(lines) == 1, "type errors come first; cross-field rules run on a well-typed spec"


def test_cross_field_problems_are_printed_one_per_line(tmp_path: Path) -> None:
    bad = _write(
        tmp_path / "bad.yaml",
        apply_changes(BASE, {"spec.mode": "onPolicy", "spec.data.promptMaxLength": 9000}),
    )
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1
    assert sorted(result.output.strip().splitlines()) == [
        f"{bad}: spec.data.promptMaxLength: must be less than spec.data.maxLength "
        "(leave room for the response)",
        f"{bad}: spec.rollout: required when spec.mode is onPolicy",
    ]


def test_a_good_and_a_bad_file_fail_together_but_both_are_reported(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.yaml", BASE)
    bad = _write(tmp_path / "bad.yaml", apply_changes(BASE, {"spec.student.replicas": 0}))
    result = runner.invoke(app, ["validate", str(good), str(bad)])
    assert result.exit_code == 1
    assert f"{good}: valid" in result.output
    assert f"{bad}: spec.student.replicas:" in result.output


def test_yaml_that_does_not_parse_names_the_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: kubedistill.io/v1alpha1\nkind: [DistillationJob\n", encoding="utf-8")
    result = runner.invoke(app, ["validate", str(broken)])
    assert result.exit_code == 1
    assert f"{broken}: line 3: not valid YAML" in result.output


def test_crd_prints_the_generated_crd() -> None:
    result = runner.invoke(app, ["crd"])
    assert result.exit_code == 0
    assert result.output == render_crd_yaml()
