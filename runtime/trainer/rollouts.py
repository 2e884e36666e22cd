"""What the student sampled, kept for people: each on-policy round's responses in
`<output>/rollouts/step-N.jsonl` (N: the first step trained on the round), the newest
`spec.output.rolloutRounds` rounds kept, and one response of a round logged at the log interval, so that a
student collapsing into repetition shows while it happens.

Each response carries the teacher's divergence from the student on it: the loss's per-token divergence
(`LossOutput.kd_per_position`) averaged over the response's tokens, as the step that trained the response
computed it, under the weights that step started from (a round feeds `steps_per_round` steps, so the
responses of its later steps are scored by weights its earlier steps already moved). It is known only once
the round's last step is done, so a round's file, its table in the trackers and its log line come then,
each line whole. A crash loses the round in progress only: a resume samples it again from a checkpoint at
or before its first step. A run that stops inside a round writes it as it stands, the responses not yet
trained without a divergence.
"""

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from kubedistill.runtime.data.sample import Sample

ROLLOUTS_FOLDER = "rollouts"
SHOWN_CHARACTERS = 300
"""Of a logged prompt (its end) and response (its start); the file has them whole."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutRecord:
    """One sampled response, as the student's tokenizer decodes it (special tokens included)."""

    step: int
    """The first step trained on the round."""
    source: str
    """The prompt's record, `file:line`."""
    prompt: str
    response: str
    response_tokens: int
    cut: bool
    """Stopped at spec.rollout.maxNewTokens, before the end-of-sequence token."""
    kd_divergence: float | None = None
    """The teacher's per-token divergence from the student, averaged over the response's tokens, at the step
    that trained it. None: not trained yet (a run that stopped inside the round), not finite (a skipped
    step), or an algorithm without a divergence per student token (the cross-tokenizer ones compare aligned
    or projected positions)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rollout_records(
    step: int,
    prompts: Sequence[Sample],
    responses: Sequence[list[int]],
    decode: Callable[[list[int]], str],
    eos_token_id: int | None,
    max_new_tokens: int,
) -> list[RolloutRecord]:
    """The records of a round: `prompts[i]` is the prompt `responses[i]` answers (repeated per sample)."""
    return [
        RolloutRecord(
            step=step,
            source=prompt.source,
            prompt=decode(prompt.input_ids.tolist()),
            response=decode(response),
            response_tokens=len(response),
            # An engine ends a finished response with the end-of-sequence token (`RolloutBackend.generate`).
            cut=len(response) >= max_new_tokens and response[-1:] != [eos_token_id],
        )
        for prompt, response in zip(prompts, responses, strict=True)
    ]


def with_divergences(
    records: Sequence[RolloutRecord], divergences: Sequence[float | None]
) -> list[RolloutRecord]:
    """The round's records with each response's divergence (non-finite ones as None: JSON has no NaN)."""
    return [
        replace(record, kd_divergence=value if value is not None and math.isfinite(value) else None)
        for record, value in zip(records, divergences, strict=True)
    ]


def round_file(directory: Path, step: int) -> Path:
    return directory / f"step-{step}.jsonl"


def kept_steps(directory: Path) -> list[int]:
    """The steps whose rounds are on disk, oldest first."""
    if not directory.is_dir():
        return []
    steps = (path.stem.removeprefix("step-") for path in directory.glob("step-*.jsonl"))
    return sorted(int(step) for step in steps if step.isdigit())


def steps_to_drop(steps: Iterable[int], keep: int, after: int | None) -> list[int]:
    """The rounds to delete: those of steps after `after` (trained again from there; None: every round, as
    a fresh run starts), then all but the newest `keep`."""
    ordered = sorted(steps)
    left = [step for step in ordered if after is not None and step <= after]
    retrained = [step for step in ordered if after is None or step > after]
    return sorted(left[: max(0, len(left) - keep)] + retrained)


def is_logged_round(step: int, steps_per_round: int, log_every: int) -> bool:
    """Whether a round whose first step is `step` holds a step that logs a progress line."""
    return any(trained % log_every == 0 for trained in range(step, step + steps_per_round))


def describe(records: Sequence[RolloutRecord]) -> str:
    """The log line of a round: its size, how many were cut, and its first response to its prompt."""
    first = records[0]
    cut = sum(record.cut for record in records)
    scored = [record.kd_divergence for record in records if record.kd_divergence is not None]
    mean = f", mean KD divergence {sum(scored) / len(scored):.4g}" if scored else ""
    own = "" if first.kd_divergence is None else f", KD divergence {first.kd_divergence:.4g}"
    return (
        f"rollout for step {first.step}: {len(records)} responses, {cut} cut at maxNewTokens{mean}; "
        f"{first.source}: ...{json.dumps(first.prompt[-SHOWN_CHARACTERS:])} -> "
        f"{json.dumps(first.response[:SHOWN_CHARACTERS])} ({first.response_tokens} tokens"
        f"{', cut' if first.cut else ''}{own})"
    )


@dataclass
class _Round:
    """A round sampled and not yet trained through: its records, and each step's divergences as it ends."""

    records: list[RolloutRecord]
    steps: list[list[float | None] | None]


class RolloutLog:
    """`<output>/rollouts/`: a file per round, the newest `keep` kept, one response logged per round at the
    log interval; each written when the round's last step is done (`sampled`, then `trained` per step)."""

    def __init__(
        self,
        output_dir: Path,
        keep: int,
        decode: Callable[[list[int]], str],
        eos_token_id: int | None,
        max_new_tokens: int,
        steps_per_round: int,
        log_every: int,
        sink: Callable[[int, list[RolloutRecord]], None] | None = None,
    ) -> None:
        """`sink` gets every round's records (the experiment trackers' tables)."""
        self.directory = output_dir / ROLLOUTS_FOLDER
        self._keep = keep
        self._decode = decode
        self._eos = eos_token_id
        self._max_new_tokens = max_new_tokens
        self._steps_per_round = steps_per_round
        self._log_every = log_every
        self._sink = sink
        self._pending: dict[int, _Round] = {}
        """Rounds sampled, by first step, whose steps are not all done (a prefetched round's too)."""

    def rewind(self, step: int | None) -> None:
        """Keep the rounds up to `step` (None: none): training goes on from there, sampling the rest anew.
        A round held is trained again from its first step (a source that kept it samples it no more: from
        the checkpoint's weights it would sample the same)."""
        for pending in self._pending.values():
            pending.steps = [None] * self._steps_per_round
        for dropped in steps_to_drop(kept_steps(self.directory), self._keep, step):
            round_file(self.directory, dropped).unlink()

    def sampled(self, step: int, prompts: Sequence[Sample], responses: Sequence[list[int]]) -> None:
        """A round sampled for `step` on: `prompts[i]` is the prompt `responses[i]` answers. Held until its
        steps are done (`trained`)."""
        logged = is_logged_round(step, self._steps_per_round, self._log_every)
        if not (logged or self._keep or self._sink):
            return
        records = rollout_records(step, prompts, responses, self._decode, self._eos, self._max_new_tokens)
        self._pending[step] = _Round(records, [None] * self._steps_per_round)

    def trained(self, step: int, divergences: Sequence[float | None]) -> None:
        """Step `step` is done, with each of its samples' divergence in its order; a step that trained no
        round of this log (mixing policies, one on the dataset's responses) is no concern of it."""
        first = next((s for s in self._pending if s <= step < s + self._steps_per_round), None)
        if first is None:
            return
        pending = self._pending[first]
        pending.steps[step - first] = list(divergences)
        if all(done is not None for done in pending.steps):
            self._write(first, self._pending.pop(first))

    def flush(self) -> None:
        """Training ended inside a round (spec.training.maxSteps): write it as it stands."""
        for first in sorted(self._pending):
            self._write(first, self._pending.pop(first))

    def _write(self, step: int, pending: _Round) -> None:
        size = len(pending.records) // self._steps_per_round
        divergences: list[float | None] = []
        for done in pending.steps:
            divergences.extend([None] * size if done is None else done)
        records = with_divergences(pending.records, divergences)
        if is_logged_round(step, self._steps_per_round, self._log_every) and records:
            log.info("%s", describe(records))
        if self._sink is not None and records:
            self._sink(step, records)
        if not self._keep:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with round_file(self.directory, step).open("w", encoding="utf-8") as stream:
            stream.writelines(json.dumps(record.to_json()) + "\n" for record in records)
        for dropped in steps_to_drop(kept_steps(self.directory), self._keep, step):
            round_file(self.directory, dropped).unlink()
