"""`kubedistill validate` and `kubedistill crd`: what a user sees on the command line."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from kubedistill.api.crd import render_crd_yaml
from kubedistill.cli import app
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


# -- files that hold more than jobs, as a CI pipeline runs `kubedistill validate examples/**` ------------

KUBEDISTILL = shutil.which("kubedistill", path=str(Path(sys.executable).parent))
PVC = {
    "apiVersion": "v1",
    "kind": "PersistentVolumeClaim",
    "metadata": {"name": "distill-shared"},
    "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Ti"}}},
}
APPLICATION = {
    "apiVersion": "argoproj.io/v1alpha1",
    "kind": "Application",
    "metadata": {"name": "distillation-jobs", "namespace": "argocd"},
    "spec": {"source": {"path": "examples/gitops/jobs"}},
}


def _kubedistill(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert KUBEDISTILL is not None, "the kubedistill command is not installed in this venv"
    return subprocess.run(
        [KUBEDISTILL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_documents_of_other_kinds_are_skipped_with_a_note_and_valid_jobs_pass(tmp_path: Path) -> None:
    storage = _write(tmp_path / "storage.yaml", PVC)
    mixed = _write(tmp_path / "mixed.yaml", APPLICATION, BASE)
    done = _kubedistill("validate", str(storage), str(mixed), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{storage}: skipped PersistentVolumeClaim 'distill-shared': not a DistillationJob",
        f"{storage}: no DistillationJob in this file",
        f"{mixed}: skipped Application 'distillation-jobs': not a DistillationJob",
        f"{mixed}: valid (qwen3-32b-to-4b)",
    ]
    assert done.stderr == ""


def test_an_invalid_job_beside_other_kinds_still_fails(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.yaml", PVC, apply_changes(BASE, {"spec.student.replicas": 0}))
    done = _kubedistill("validate", str(bad), cwd=tmp_path)
    assert done.returncode == 1
    assert f"{bad}: skipped PersistentVolumeClaim 'distill-shared': not a DistillationJob" in done.stdout
    assert f"{bad}: spec.student.replicas:" in done.stderr
    assert "Traceback" not in done.stderr


def test_each_job_of_a_file_is_checked_and_every_problem_reported(tmp_path: Path) -> None:
    second = apply_changes(BASE, {"metadata.name": "second", "spec.student.replicas": 0})
    third = apply_changes(BASE, {"metadata.name": "third", "spec.distillation.kdRatio": 2})
    both = _write(tmp_path / "jobs.yaml", second, third)
    result = runner.invoke(app, ["validate", str(both)])
    assert result.exit_code == 1
    assert f"{both}: spec.student.replicas:" in result.output
    assert f"{both}: spec.distillation.kdRatio:" in result.output


def test_the_repository_examples_validate_as_a_ci_pipeline_runs_them() -> None:
    """`examples/**` without bash's globstar names the folders; each stands for the YAML files below it."""
    root = Path(__file__).parents[2]
    folders = sorted(str(path.relative_to(root)) for path in (root / "examples").iterdir())
    done = _kubedistill("validate", *folders, cwd=root)
    assert done.returncode == 0, done.stderr
    assert "examples/storage/shared-pvc.yaml: skipped PersistentVolumeClaim" in done.stdout
    assert "examples/local/offpolicy.yaml: valid" in done.stdout
    files = sorted(str(path.relative_to(root)) for path in (root / "examples").rglob("*.yaml"))
    reported = {line.split(": ")[0] for line in done.stdout.splitlines()}
    assert reported == set(files), "each file once"
