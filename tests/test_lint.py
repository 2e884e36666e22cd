"""The tree stays ruff-clean and pyright-clean (the same checks as `make lint`), so style drift and type
errors fail CI, not review."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUFF = shutil.which("ruff", path=str(BIN)) or "ruff"
PYRIGHT = shutil.which("pyright", path=str(BIN)) or "pyright"
TYPECHECK_LINKS = ROOT / ".venv" / "typecheck" / "kubedistill"


def test_ruff_finds_nothing_to_fix() -> None:
    result = subprocess.run([RUFF, "check", "."], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_ruff_would_reformat_nothing() -> None:
    result = subprocess.run(
        [RUFF, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_pyright_finds_no_type_errors() -> None:
    """Strict for api/, cli/ and operator/; the runtime and bench with the rules pyproject.toml relaxes."""
    assert TYPECHECK_LINKS.is_dir(), "no .venv/typecheck links: run `make venv`"
    result = subprocess.run([PYRIGHT], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors" in result.stdout
