"""The operator image has neither torch nor ray, and the standard library keeps the name `operator`."""

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

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
        for package in ("api", "operator")
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


def test_the_cli_commands_of_the_operator_image_work_without_torch_or_ray() -> None:
    result = _run(
        """
        import sys
        from kubedistill.runtime.cli import app
        from typer.testing import CliRunner
        outcome = CliRunner().invoke(app, ["crd"])
        sys.exit(outcome.exit_code or (0 if "CustomResourceDefinition" in outcome.output else 3))
        """
    )
    assert result.returncode == 0, result.stderr + result.stdout


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
        for top in ("api", "operator", "runtime")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found == declared
