"""TensorBoard: event files in spec.tracking.tensorboard.logDir (default `<output>/tensorboard`), written with
torch's `SummaryWriter` (which writes through the `tensorboard` package's event-file writer).

Scalars per step; the spec, the probes' answers, the rollout tables and the summary in the Text tab. A
resumed run writes to the same folder with `purge_step`: TensorBoard hides the events of the steps after the
checkpoint that the first run wrote and the resumed one trains again.
"""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from kubedistill.api.tracking import Tracker
from kubedistill.runtime.trainer.rollouts import RolloutRecord
from kubedistill.runtime.trainer.tracking.records import ROLLOUT_COLUMNS, rollout_rows

FOLDER = "tensorboard"
FLUSH_SECONDS = 30


def markdown_table(rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> str:
    """TensorBoard's Text tab renders markdown: a round as a table, cells on one line, pipes escaped."""

    def cell(value: Any) -> str:
        return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "\\n")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


class TensorBoardSink:
    tracker = Tracker.TENSORBOARD

    def __init__(self, log_dir: Path, spec: Mapping[str, Any], resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_id = str(log_dir)
        self.url: str | None = None
        """TensorBoard serves no page of its own: `tensorboard --logdir` on the folder."""
        resumed = resume_step is not None
        self._writer = SummaryWriter(
            str(log_dir), purge_step=resume_step + 1 if resumed else None, flush_secs=FLUSH_SECONDS
        )
        if not resumed:
            self._writer.add_text(
                "spec", "```yaml\n" + yaml.safe_dump(dict(spec), sort_keys=False) + "```", 0
            )

    def log(self, step: int, scalars: Mapping[str, float], texts: Mapping[str, str]) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, step)
        for name, text in texts.items():
            self._writer.add_text(name, text, step)

    def rollouts(self, step: int, records: Sequence[RolloutRecord]) -> None:
        self._writer.add_text("rollouts", markdown_table(rollout_rows(records), ROLLOUT_COLUMNS), step)

    def summary(self, summary: Mapping[str, Any]) -> None:
        step = int(summary.get("steps") or 0)
        self._writer.add_text("summary", "```json\n" + json.dumps(dict(summary), indent=2) + "\n```", step)
        self._writer.flush()

    def upload(self, files: Sequence[Path], name: str) -> None:
        """TensorBoard keeps no artifacts: the student stays in the output folder."""

    def close(self, succeeded: bool) -> None:
        self._writer.close()
