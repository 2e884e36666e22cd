"""What every benchmark ends with: a table on the terminal and `bench/results/<name>.json`.

Rows are flat dicts sharing their keys; the first key names the row, and the JSON keeps the rows by that
name (`results[<row name>][<column>]`) next to the machine they were measured on.
"""

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def report(name: str, title: str, rows: list[dict[str, Any]], settings: dict[str, Any]) -> Path:
    """Print the rows as a table and write them, with the settings they were measured with, as JSON."""
    columns = list(rows[0])
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*(_cell(row[column]) for column in columns))
    # Off a terminal rich assumes 80 columns and would cut the column names; a log file has no width.
    console = Console() if sys.stdout.isatty() else Console(width=1000)
    console.print(table)

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
        },
        "settings": settings,
        "results": {str(row[columns[0]]): row for row in rows},
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    console.print(f"wrote {path}")
    return path
