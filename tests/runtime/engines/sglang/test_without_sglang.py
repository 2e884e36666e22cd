"""Machines without SGLang (CPU images, laptops): our SGLang modules import without trying to import SGLang,
and starting an engine says which extra to install. The checks run in a fresh interpreter whose import
system refuses SGLang, and records every attempt, even where SGLang is installed."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.engines.sglang.wheel_source import ROOT

PROBE = """
import importlib, importlib.abc, json, sys

attempted = []

class RefuseSGLang(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "sglang":
            attempted.append(name)
            raise ImportError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, RefuseSGLang())

for name in (
    "kubedistill.runtime.engines.sglang.args",
    "kubedistill.runtime.engines.weight_sync",
    "kubedistill.runtime.engines.sglang.engine",
    "kubedistill.runtime.engines.sglang.teacher",
    "kubedistill.runtime.engines.sglang.rollout",
    "kubedistill.runtime.engines.sglang.smoke",
):
    importlib.import_module(name)
attempted_on_import = list(attempted)

from kubedistill.api.spec import Precision, RolloutSpec, TeacherSpec
from kubedistill.runtime.engines.sglang.rollout import SGLangRollout
from kubedistill.runtime.engines.sglang.engine import join_weight_sync_group
from kubedistill.runtime.engines.weight_sync import weight_sync_layout
from kubedistill.runtime.engines.sglang.teacher import SGLangTeacher, single_node_placement

starts = {
    "teacher": lambda: SGLangTeacher(
        TeacherSpec(), sys.argv[1], single_node_placement(), colocate=False, precision=Precision.BF16
    ),
    "rollout": lambda: SGLangRollout(
        RolloutSpec(), sys.argv[1], single_node_placement(), colocate=True, precision=Precision.BF16, seed=0
    ),
    "trainer": lambda: join_weight_sync_group(weight_sync_layout([1], "127.0.0.1", 29500).trainer, "cuda"),
}
errors = {}
for name, start in starts.items():
    try:
        start()
    except Exception as error:
        errors[name] = [type(error).__name__, str(error)]
print(json.dumps({"attempted_on_import": attempted_on_import, "attempted": attempted, "errors": errors}))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = tmp_path_factory.mktemp("model")
    (model / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64}))
    command = [sys.executable, "-c", PROBE, str(model)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_importing_our_sglang_modules_does_not_even_try_to_import_sglang(probe: dict[str, Any]) -> None:
    assert probe["attempted_on_import"] == []


@pytest.mark.parametrize("what", ["teacher", "rollout", "trainer"])
def test_starting_sglang_without_it_names_the_extra_to_install(what: str, probe: dict[str, Any]) -> None:
    kind, message = probe["errors"][what]
    assert kind == "SGLangNotInstalled"
    assert "pip install 'kubedistill[sglang]'" in message


def test_the_probe_really_refuses_sglang(probe: dict[str, Any]) -> None:
    assert "sglang" in probe["attempted"]


def test_the_smoke_script_is_valid_bash_around_the_smoke_module() -> None:
    script = Path(ROOT) / "images" / "runtime" / "gpu-smoke.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    assert 'exec "$PYTHON" -m kubedistill.runtime.engines.sglang.smoke' in script.read_text()
