"""The operator image has neither torch nor ray, and the standard library keeps the name `operator`."""

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCK_HEAVY_IMPORTS = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "ray", "transformers", "sglang"}:
                raise ImportError(f"{name} is not installed in the operator image")
            return None

    sys.meta_path.insert(0, Block())
    """
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_HEAVY_IMPORTS + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def test_api_and_operator_import_without_torch_or_ray() -> None:
    modules = sorted(
        "kubedistill." + ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in ("api", "cli", "operator")
        for path in (ROOT / package).rglob("*.py")
    )
    result = _run(
        "import importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('imported', len(" + repr(modules) + "))"
    )
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout


def test_the_blocker_really_blocks_torch() -> None:
    result = _run("import torch")
    assert result.returncode != 0
    assert "not installed in the operator image" in result.stderr


BLOCK_THE_RUNTIME_TOO = BLOCK_HEAVY_IMPORTS.replace(
    'if name.split(".")[0] in',
    'if name == "kubedistill.runtime" or name.startswith("kubedistill.runtime.") or name.split(".")[0] in',
)
"""The operator image as it could be: not even our runtime package (its modules import torch lazily, but
nothing the image runs needs them)."""


def _as_in_the_operator_image(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A process of this environment where torch, ray, transformers, sglang and kubedistill.runtime do not
    import (a sitecustomize on PYTHONPATH installs the blocker before the program runs)."""
    (tmp_path / "sitecustomize.py").write_text(BLOCK_THE_RUNTIME_TOO, encoding="utf-8")
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        check=False,
    )


def _kubedistill_as_in_the_operator_image(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `kubedistill` script (what the operator image's entrypoint runs)."""
    return _as_in_the_operator_image(tmp_path, str(Path(sys.executable).parent / "kubedistill"), *args)


@pytest.mark.parametrize(
    "module", ["torch", "ray", "kubedistill.runtime", "kubedistill.runtime.trainer.controller"]
)
def test_the_sitecustomize_blocker_really_blocks(tmp_path: Path, module: str) -> None:
    result = _as_in_the_operator_image(tmp_path, sys.executable, "-c", f"import {module}")
    assert result.returncode != 0
    assert "not installed in the operator image" in result.stderr


GOLDEN_JOB = ROOT / "tests" / "operator" / "golden" / "sft-from-a-file" / "job.yaml"


def test_render_runs_without_torch_ray_or_the_runtime(tmp_path: Path) -> None:
    result = _kubedistill_as_in_the_operator_image(tmp_path, "render", str(GOLDEN_JOB))
    assert result.returncode == 0, result.stderr
    assert "kind: RayJob" in result.stdout


def test_validate_runs_without_torch_ray_or_the_runtime(tmp_path: Path) -> None:
    result = _kubedistill_as_in_the_operator_image(tmp_path, "validate", str(GOLDEN_JOB))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("valid (student-sft)")


@pytest.mark.parametrize("command", ["crd", "operator --help", "validate --help", "run --help"])
def test_the_commands_run_without_torch_ray_or_the_runtime(tmp_path: Path, command: str) -> None:
    result = _kubedistill_as_in_the_operator_image(tmp_path, *command.split())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_a_bare_operator_import_is_the_standard_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.__file__, hasattr(operator, 'itemgetter'))"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert "kubedistill" not in result.stdout and result.stdout.strip().endswith("True")


def test_every_python_package_folder_is_packaged() -> None:
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        "kubedistill." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("api", "cli", "operator", "runtime")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found == declared
