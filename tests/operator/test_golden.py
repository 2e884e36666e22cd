"""Rendering golden files: a manifest in, the checked-in Kubernetes objects out.

A change to rendering shows up as a diff of these files in review. To accept one on purpose:
`KUBEDISTILL_UPDATE_GOLDEN=1 .venv/bin/pytest tests/operator/test_golden.py`, then read the diff.
"""

import os
from pathlib import Path

import pytest

from kubedistill.operator.render import render
from kubedistill.operator.settings import RenderSettings
from kubedistill.operator.yaml_output import dump_all
from tests.operator.manifests import GOLDEN_IMAGE, golden_cases, golden_job

UPDATE = os.environ.get("KUBEDISTILL_UPDATE_GOLDEN") == "1"


@pytest.mark.parametrize("case", golden_cases(), ids=lambda case: case.name)
def test_rendering_matches_the_golden_file(case: Path) -> None:
    rendered = dump_all(render(golden_job(case), RenderSettings(GOLDEN_IMAGE)))
    expected = case / "rendered.yaml"
    if UPDATE:
        expected.write_text(rendered, encoding="utf-8")
    assert expected.is_file(), f"no {expected.name}; create it with KUBEDISTILL_UPDATE_GOLDEN=1"
    assert rendered == expected.read_text(encoding="utf-8"), (
        f"rendering of {case.name} changed; if intended, regenerate with KUBEDISTILL_UPDATE_GOLDEN=1"
    )
