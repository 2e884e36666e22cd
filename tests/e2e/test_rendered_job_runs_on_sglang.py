"""The rendered job end to end with its teacher on the real SGLang engine: the head pod's entrypoint, env and
volumes as the operator rendered them, on a node without GPUs, so the engine's placement is the CPU."""

from pathlib import Path

import pytest

from tests.e2e.test_rendered_job_runs import run_as_rendered
from tests.operator.harness import Cluster
from tests.runtime.conftest import TinyWorld

pytestmark = pytest.mark.sglang


async def test_a_job_with_an_sglang_teacher_runs_as_rendered_until_it_succeeds(
    cluster: Cluster, tiny: TinyWorld, tmp_path: Path
) -> None:
    await run_as_rendered(cluster, tiny, tmp_path, teacher_backend="sglang")
