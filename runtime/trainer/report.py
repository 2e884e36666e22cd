"""What a run leaves for people: a progress bar and log lines while it runs, then a loss-curve PNG, a
`summary.json` and a summary table (`metrics.jsonl` is written step by step: `records.py`)."""

import json
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from kubedistill.runtime.trainer.records import TrainRecord

LOSS_PLOT = "loss.png"
SUMMARY_FILE = "summary.json"

log = logging.getLogger(__name__)


class Progress:
    """A bar on a terminal, and a log line every `log_every` steps (spec.training.logEverySteps): what
    `kubectl logs` of the Ray job shows, where no bar is drawn."""

    def __init__(
        self, total_steps: int, initial_step: int, description: str, log_every: int, enabled: bool = True
    ) -> None:
        self._total = total_steps
        self._log_every = log_every
        self._bar = tqdm(
            total=total_steps,
            initial=initial_step,
            desc=description,
            unit="step",
            disable=not enabled,
            leave=True,
        )
        self._redirect = ExitStack()
        if enabled:
            # A log line written between two redraws would land on the bar's own line: through tqdm, the bar
            # steps aside for it and is drawn again below.
            self._redirect.enter_context(logging_redirect_tqdm())

    def update(self, record: TrainRecord) -> None:
        self._bar.set_postfix(
            loss=f"{record.loss:.4f}",
            step_s=f"{record.step_seconds:.2f}",
            tok_s=f"{record.tokens_per_second:.0f}",
            refresh=False,
        )
        self._bar.update(1)
        if record.step % self._log_every == 0:
            log.info(
                "step %d/%d: loss %.4f, %.2f s/step, %.0f tokens/s",
                record.step,
                self._total,
                record.loss,
                record.step_seconds,
                record.tokens_per_second,
            )

    def close(self) -> None:
        self._bar.close()
        self._redirect.close()


def plot_losses(directory: Path, history: Sequence[dict], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in history if r.get("kind") == "train"]
    evals = [r for r in history if r.get("kind") == "eval"]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    steps = [r["step"] for r in train]
    axis.plot(steps, [r["loss"] for r in train], label="loss", linewidth=1.2)
    if any(r["kd_loss"] for r in train):
        axis.plot(steps, [r["kd_loss"] for r in train], label="kd loss", linewidth=1.0, alpha=0.8)
    axis.plot(steps, [r["ce_loss"] for r in train], label="ce loss", linewidth=1.0, alpha=0.8)
    if evals:
        axis.plot([r["step"] for r in evals], [r["eval_ce_loss"] for r in evals], "o--", label="eval ce loss")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (per target token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = directory / LOSS_PLOT
    figure.savefig(path)
    plt.close(figure)
    return path


def write_summary(directory: Path, summary: dict) -> Path:
    path = directory / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return path


def print_summary(summary: dict, console: Console | None = None) -> None:
    table = Table(title=f"KubeDistill run: {summary['job']}", show_header=True)
    table.add_column("metric")
    # Folded, not cut: the output folder, the metrics file and the plot are paths a user copies.
    table.add_column("value", justify="right", overflow="fold")
    for key, value in summary.items():
        if key == "job" or isinstance(value, (dict, list)):
            continue
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    (console or Console()).print(table)
