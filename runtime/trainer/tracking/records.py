"""What a tracker is given, as plain values: the pure part of every sink.

A record of `metrics.jsonl` becomes scalars named `<kind>/<field>` (`train/loss`, `train/compute_seconds`,
`eval/ce_loss`) at its step; the spec becomes a flat config; a rollout round becomes the rows of a table.
"""

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from kubedistill.runtime.trainer.rollouts import RolloutRecord

ROLLOUT_COLUMNS = ("step", "source", "prompt", "response", "response_tokens", "cut", "kd_divergence")


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a record (a `metrics.jsonl` line), named `<kind>/<field>`; booleans as 0/1, and what
    is missing or not finite (an eval without a teacher, a NaN grad norm) left out."""
    kind = record["kind"]
    values: dict[str, float] = {}
    for key, value in record.items():
        if key in ("kind", "step") or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        values[f"{kind}/{key.removeprefix(f'{kind}_')}"] = float(value)
    return values


def texts(record: Mapping[str, Any]) -> dict[str, str]:
    """The text of a record (a probe's greedy answer), named like its scalars."""
    kind = record["kind"]
    return {
        f"{kind}/{key}": value for key, value in record.items() if key != "kind" and isinstance(value, str)
    }


def flat_config(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """The leaves of the spec as (`training.learningRate`, "0.01") pairs: MLflow's params are flat."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flat_config(value, f"{name}.")
        else:
            yield name, str(value)


def rollout_rows(records: Sequence[RolloutRecord]) -> list[list[Any]]:
    """A round's responses as rows of `ROLLOUT_COLUMNS`."""
    return [[getattr(record, column) for column in ROLLOUT_COLUMNS] for record in records]


def summary_scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of `summary.json` (its lists and nested sections stay in the file)."""
    return {
        key: float(value)
        for key, value in summary.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }
