"""What the student sampled, kept for people: each on-policy round's responses in
`<output>/rollouts/step-N.jsonl` (N: the first step trained on the round), the newest
`spec.output.rolloutRounds` rounds kept, and one response of a round logged at the log interval, so that a
student collapsing into repetition shows while it happens.

The teacher's divergence per response is not recorded: the file is written when the round is sampled,
before a step trains on it; the loss returns one sum over a micro-batch's target tokens
(`LossOutput.kd_sum`, the fused loss summing chunks that span responses); and a round's responses are packed
into micro-batches over the ranks and trained over `steps_per_round` steps with changing weights. A
per-response figure would take a per-row reduction in every loss and a way back from the packing.
"""

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
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
    return (
        f"rollout for step {first.step}: {len(records)} responses, {cut} cut at maxNewTokens; "
        f"{first.source}: ...{json.dumps(first.prompt[-SHOWN_CHARACTERS:])} -> "
        f"{json.dumps(first.response[:SHOWN_CHARACTERS])} ({first.response_tokens} tokens"
        f"{', cut' if first.cut else ''})"
    )


class RolloutLog:
    """`<output>/rollouts/`: a file per round, the newest `keep` kept, one response logged per round at the
    log interval."""

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

    def rewind(self, step: int | None) -> None:
        """Keep the rounds up to `step` (None: none): training goes on from there, sampling the rest anew."""
        for dropped in steps_to_drop(kept_steps(self.directory), self._keep, step):
            round_file(self.directory, dropped).unlink()

    def write(self, step: int, prompts: Sequence[Sample], responses: Sequence[list[int]]) -> None:
        """A round sampled for `step` on: `prompts[i]` is the prompt `responses[i]` answers."""
        logged = is_logged_round(step, self._steps_per_round, self._log_every)
        if not (logged or self._keep or self._sink):
            return
        records = rollout_records(step, prompts, responses, self._decode, self._eos, self._max_new_tokens)
        if logged and records:
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
