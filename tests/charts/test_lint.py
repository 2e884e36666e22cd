"""`helm lint --strict` passes with the default values and with every values file in the chart's ci/."""

from pathlib import Path

import pytest

from tests.charts.helm import CHART, CI_VALUES, run_helm


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_the_chart_lints_strictly(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + ([f"--values={values}"] if values else [])
    result = run_helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
