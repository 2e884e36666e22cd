"""The real helm binary (installed into the venv by `make venv`), run on the chart with isolated state."""

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubedistill"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "kd"
NAMESPACE = "kubedistill-system"


@functools.cache
def helm_binary() -> str:
    found = shutil.which("helm") or str(Path(sys.executable).parent / "helm")
    if not Path(found).is_file():
        raise AssertionError("no helm binary: run `make venv` (images/tools/install_helm.py installs it)")
    return found


@functools.cache
def _helm_home() -> str:
    return tempfile.mkdtemp(prefix="helm-home-")


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    """helm with its config, cache and data in a private temporary directory (Helm 4 writes there)."""
    home = _helm_home()
    env = {
        **os.environ,
        "HOME": home,
        "HELM_CACHE_HOME": f"{home}/cache",
        "HELM_CONFIG_HOME": f"{home}/config",
        "HELM_DATA_HOME": f"{home}/data",
    }
    env.pop("KUBECONFIG", None)
    return subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, env=env, check=False, timeout=60
    )


@dataclass(frozen=True)
class Rendered:
    objects: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        (obj,) = self.of_kind(kind)
        return obj


def values_args(values_files: tuple[Path, ...] = (), settings: tuple[str, ...] = ()) -> list[str]:
    return [*(f"--values={path}" for path in values_files), *(f"--set={item}" for item in settings)]


@functools.cache
def template(
    values_files: tuple[Path, ...] = (), settings: tuple[str, ...] = (), release: str = RELEASE
) -> Rendered:
    result = run_helm(
        "template", release, str(CHART), f"--namespace={NAMESPACE}", *values_args(values_files, settings)
    )
    assert result.returncode == 0, result.stderr
    documents = yaml.safe_load_all(result.stdout)
    return Rendered(tuple(doc for doc in documents if doc))
