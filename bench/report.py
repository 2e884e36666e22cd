"""What every benchmark ends with: a table on the terminal and `bench/results/<name>.json`.

Rows are flat dicts sharing their keys; the first key names the row, and the JSON keeps the rows by that
name (`results[<row name>][<column>]`) next to the machine they were measured on and its load: the load
average when the benchmark's process started (when it imported this module) and when it reported. On a
shared machine absolute timings follow the neighbours; ratios of variants run in turn (`alternate`) move far
less, so those are what the goals (`Goal`) are judged on.
"""

import json
import os
import platform
import statistics
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
T = TypeVar("T")


def machine_load() -> dict[str, Any]:
    """The 1, 5 and 15 minute load averages and the CPU count: how busy the machine was."""
    return {"load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}


LOAD_AT_START = machine_load()


def alternate(variants: Sequence[str], repeats: int, measure: Callable[[str], T]) -> dict[str, list[T]]:
    """`repeats` rounds of every variant in turn (A B C A B C ...), so that a neighbour's burst of load
    falls on all of them rather than on one."""
    results: dict[str, list[T]] = {variant: [] for variant in variants}
    for _ in range(repeats):
        for variant in variants:
            results[variant].append(measure(variant))
    return results


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def over_repeats(runs: Sequence[dict[str, Any]], ranged: Collection[str] | None = None) -> dict[str, Any]:
    """One row from repeated runs of one variant: each column's median, as `spread` (with its range) for the
    columns in `ranged` (every column when None)."""
    return {
        column: spread([run[column] for run in runs])
        if ranged is None or column in ranged
        else statistics.median(run[column] for run in runs)
        for column in runs[0]
    }


@dataclass(frozen=True)
class Goal:
    """A figure the issue set a goal for: `measured` against `target`, higher (`at_least`) or lower."""

    name: str
    measured: float
    target: float
    at_least: bool = True

    @property
    def met(self) -> bool:
        return self.measured >= self.target if self.at_least else self.measured <= self.target

    def row(self) -> dict[str, Any]:
        return {
            "goal": self.name,
            "measured": self.measured,
            "target": f"{'>=' if self.at_least else '<='} {self.target:g}",
            "result": "PASS" if self.met else "MISS",
        }


def _cell(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"median", "min", "max"}:
        return f"{value['median']:.4g} ({value['min']:.4g}-{value['max']:.4g})"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _load_line(start: dict[str, Any], end: dict[str, Any]) -> str:
    def fmt(load: dict[str, Any]) -> str:
        return "/".join(f"{x:.2f}" for x in load["load_average"])

    return f"load average (1/5/15 min) {fmt(start)} at start, {fmt(end)} at end, on {end['cpus']} CPUs"


def _print_table(console: Console, title: str, rows: list[dict[str, Any]], caption: str | None) -> None:
    columns = list(rows[0])
    table = Table(title=title, caption=caption)
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*(_cell(row[column]) for column in columns))
    console.print(table)


def report(
    name: str,
    title: str,
    rows: list[dict[str, Any]],
    settings: dict[str, Any],
    goals: Sequence[Goal] = (),
) -> Path:
    """Print the rows as a table (and the goals as a second one) and write them, with the settings they were
    measured with and the machine's load, as JSON."""
    end = machine_load()
    load = _load_line(LOAD_AT_START, end)
    # Off a terminal rich assumes 80 columns and would cut the column names; a log file has no width.
    console = Console() if sys.stdout.isatty() else Console(width=1000)
    _print_table(console, title, rows, load)
    if goals:
        _print_table(console, f"{name}: goals", [goal.row() for goal in goals], None)

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {
        "name": name,
        "title": title,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_at_start": LOAD_AT_START,
            "load_at_end": end,
        },
        "settings": settings,
        "results": {str(row[next(iter(row))]): row for row in rows},
        "goals": [{**asdict(goal), "met": goal.met} for goal in goals],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    console.print(f"wrote {path}")
    return path
