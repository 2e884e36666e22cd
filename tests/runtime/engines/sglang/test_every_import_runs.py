"""Every SGLang name our code imports, in any process (the engine's, and the scheduler processes that run
`engine.run_scheduler_process`), imported for real from the pinned release.

The source checks beside this file parse the wheel; they passed while `sglang.srt.distributed` no longer
exported `get_tensor_model_parallel_rank` (its `__all__` leaves it out), and the teacher's scheduler died at
start-up on every device. An import statement is what Python runs, so this runs each one.
"""

import json
import os
import subprocess
import sys

import pytest

from kubedistill.runtime.engines.sglang.args import USE_CPU_ENGINE
from tests.runtime.engines.sglang.our_usage import ROOT, Import, parse, runtime_files, sglang_imports

pytestmark = pytest.mark.sglang

IMPORTER = """
import json, sys
failures = []
for statement in json.loads(sys.argv[1]):
    try:
        exec(statement, {})
    except Exception as error:
        failures.append([statement, f"{type(error).__name__}: {error}"])
print(json.dumps(failures))
"""


def statement(imported: Import) -> str:
    if imported.name is None:
        return f"import {imported.module}"
    return f"from {imported.module} import {imported.name}"


def our_sglang_imports() -> dict[str, str]:
    """Each import statement of SGLang in runtime/, with the first place it is written."""
    found: dict[str, str] = {}
    for path in runtime_files():
        for imported in sglang_imports(parse(path)):
            found.setdefault(statement(imported), f"{path.relative_to(ROOT)}:{imported.line}")
    return found


def failing_imports(statements: list[str]) -> list[list[str]]:
    # A fresh interpreter with SGLang's CPU switch, as a CPU placement's engine process has it.
    result = subprocess.run(
        [sys.executable, "-c", IMPORTER, json.dumps(statements)],
        env={**os.environ, USE_CPU_ENGINE: "1"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_sglang_name_our_runtime_imports_imports_from_the_pinned_release() -> None:
    imports = our_sglang_imports()
    failures = failing_imports(sorted(imports))
    assert [f"{imports[line]}: {line}: {error}" for line, error in failures] == []


def test_the_scheduler_process_imports_are_among_those_checked() -> None:
    # The replaced scheduler's own imports are the ones that failed at start-up; they must stay in scope.
    assert {
        "from sglang.srt.distributed.parallel_state import get_tensor_model_parallel_rank",
        "from sglang.srt.managers.scheduler import run_scheduler_process",
    } <= set(our_sglang_imports())


def test_a_name_the_release_does_not_export_fails_the_check() -> None:
    # What the scheduler imported before the fix: parsing found the name, importing does not.
    failures = failing_imports(["from sglang.srt.distributed import get_tensor_model_parallel_rank"])
    assert len(failures) == 1 and failures[0][1].startswith("ImportError")
