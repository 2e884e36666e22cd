"""The summary a run prints when it ends."""

import io

from rich.console import Console

from kubedistill.runtime.trainer.report import print_summary


def test_the_summary_table_shows_long_paths_whole_in_a_narrow_terminal() -> None:
    path = "/home/someone/projects/kubedistill/demo-output/runs/offpolicy-distilled/metrics.jsonl"
    printed = io.StringIO()
    print_summary({"job": "offpolicy", "steps": 20, "metrics_file": path}, Console(file=printed, width=60))

    rows = [line.split("│") for line in printed.getvalue().splitlines() if line.startswith("│")]
    metric = ""
    values: dict[str, str] = {}
    for _, name, value, _ in rows:
        metric = name.strip() or metric
        values[metric] = values.get(metric, "") + value.strip()
    assert values == {"steps": "20", "metrics_file": path}
