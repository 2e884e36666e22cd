"""`make bench`: every benchmark in turn, each in its own process (each prints a table and writes
bench/results/<name>.json), then every goal the benchmarks judged, PASS or MISS, in one table. Run from
the repository root.

    .venv/bin/python -m bench [--full] [name ...]

By default each benchmark runs at the settings in `QUICK` (13 minutes on a 2-core machine before
bench.sglang was added, which took 1.5-2.5 minutes more on its own; see README): the goals' shapes and
at least three alternating repeats, but one loss (fkl, the spec's default) instead of seven, the operator
at 100 jobs and 300 running ones, and the step breakdown without the dynamic-batching runs. `--full` runs
each benchmark at its own defaults (every loss, 1000 running jobs, dynamic batching), which takes longer.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.report import RESULTS

BENCHMARKS = ("transfer", "loss", "step", "operator", "vs_trl", "sglang", "data", "reference")
LAYERS = {"sglang": Path(__file__).resolve().parents[1] / ".venv" / "sglang-cpu"}
"""Benchmarks that run in a layer of their own, put in front of .venv on PYTHONPATH (the SGLang-on-CPU
layer: images/sglang-cpu/requirements.txt says why it is not .venv). An absolute path: the repository root
itself on PYTHONPATH would hide the standard library's `operator` behind the folder operator/."""
QUICK = {
    "loss": ["--losses", "fkl", "--repeats", "3"],
    "step": ["--steps", "12", "--repeats", "3", "--no-dynamic-batching"],
    "operator": ["--jobs", "100", "--running", "300"],
    "vs_trl": ["--repeats", "3"],
}


def goals_table(names: list[str]) -> Table:
    table = Table(title="Goals (bench/results/<name>.json, this run)")
    for column in ("benchmark", "goal", "measured", "target", "result"):
        table.add_column(column, justify="left" if column in ("benchmark", "goal") else "right")
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        for goal in json.loads(path.read_text()).get("goals", []):
            sign = ">=" if goal["at_least"] else "<="
            verdict = "PASS" if goal["met"] else "MISS"
            table.add_row(
                name, goal["name"], f"{goal['measured']:.3g}", f"{sign} {goal['target']:g}", verdict
            )
    return table


def main() -> int:
    arguments = sys.argv[1:]
    full = "--full" in arguments
    chosen = [name for name in arguments if name != "--full"] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        command = [sys.executable, "-m", f"bench.{name}", *([] if full else QUICK.get(name, []))]
        layer = {"PYTHONPATH": str(LAYERS[name])} if name in LAYERS else {}
        if subprocess.run(command, check=False, env={**os.environ, **layer}).returncode:
            failed.append(name)
    Console(width=None if sys.stdout.isatty() else 1000).print(
        goals_table([n for n in chosen if n not in failed])
    )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
