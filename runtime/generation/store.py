"""The generated dataset on disk: `<output>/generated/<job>.jsonl`, one line per (prompt, sample).

- Lines are appended as responses arrive, each with one `write` on a file opened for appending, so a run
  killed mid-way leaves whole lines and at most one partial last line; a rerun cuts that line off and
  generates only the (prompt, sample) pairs not yet in the file.
- A pair that could not be generated (the request kept failing, the response was empty, or cut off at
  maxNewTokens unless keepTruncated) goes to `<job>.skipped.jsonl` with its reason, never silently away.
- When every pair is done, the file is rewritten in prompt order (so two runs of one job train on the same
  order) and `<job>.report.json` is written: from then on a rerun reuses the file as it is, without asking
  again for the skipped pairs (which would change the data a checkpoint was trained on). Delete the report
  to retry them, or the file to generate everything again.
- Every line records the teacher and the sampling settings; a rerun with others, over other prompts, with
  fewer samples per prompt, or without keepTruncated over a file holding cut-off responses, is refused
  rather than mixing the two. More samples per prompt, or keepTruncated turned on, generate what is missing.
"""

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubedistill.runtime.generation.prompts import Prompt

FINISHED = "stop"
CUT_OFF = "length"


class GenerationRefused(ValueError):
    """The generated file on disk cannot be reused with this job; the message names it and what to do."""


@dataclass(frozen=True)
class Settings:
    """What a response depends on besides its prompt; recorded on every line."""

    teacher: str
    """The model id: spec.teacher.model, or the endpoint's model."""
    endpoint: str | None
    """The endpoint's baseUrl; None for the job's own teacher."""
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    """Sample i of a prompt is drawn with seed + i."""

    def sampling(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "topP": self.top_p,
            "maxNewTokens": self.max_new_tokens,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Response:
    text: str
    finish_reason: str
    """OpenAI's: `stop` (the model ended it) or `length` (cut at maxNewTokens)."""


@dataclass(frozen=True)
class Skipped:
    prompt_id: str
    sample: int
    source: str
    reason: str
    """`failed` (the request kept failing), `empty` or `length` (cut off at maxNewTokens)."""
    detail: str


def verdict(response: Response, keep_truncated: bool) -> str | None:
    """Why a response is not a training record (a `Skipped.reason`), or None to keep it."""
    if not response.text.strip():
        return "empty"
    if response.finish_reason == CUT_OFF and not keep_truncated:
        return CUT_OFF
    return None


class GeneratedFile:
    def __init__(
        self, directory: Path, name: str, settings: Settings, samples_per_prompt: int, keep_truncated: bool
    ) -> None:
        self.path = directory / f"{name}.jsonl"
        self.skipped_path = directory / f"{name}.skipped.jsonl"
        self.report_path = directory / f"{name}.report.json"
        self.settings = settings
        self.samples_per_prompt = samples_per_prompt
        self.keep_truncated = keep_truncated

    def report(self) -> dict[str, Any] | None:
        """The report of a finished generation with these settings; None when none finished."""
        if not self.report_path.is_file() or not self.path.is_file():
            return None
        report = json.loads(self.report_path.read_text(encoding="utf-8"))
        same = (report.get("settings"), report.get("samplesPerPrompt"), report.get("keepTruncated"))
        # Other numbers of samples or another keepTruncated: the lines are checked one by one instead, and
        # what is missing is generated.
        return (
            report if same == (asdict(self.settings), self.samples_per_prompt, self.keep_truncated) else None
        )

    def existing(self, prompts: Iterable[Prompt]) -> set[tuple[str, int]]:
        """The (prompt id, sample) pairs already in the file, after cutting off a partial last line."""
        if not self.path.is_file():
            return set()
        self._cut_partial_line()
        known = {prompt.id for prompt in prompts}
        done: set[tuple[str, int]] = set()
        with self.path.open(encoding="utf-8") as file:
            for number, text in enumerate(file, start=1):
                where = f"{self.path}:{number}"
                try:
                    line = json.loads(text)
                except json.JSONDecodeError as error:
                    raise GenerationRefused(
                        f"{where}: not a generated record ({error.msg}); delete the file to generate again"
                    ) from None
                self._check_line(line, where, known)
                done.add((line["promptId"], line["sample"]))
        return done

    def _cut_partial_line(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as file:
                file.truncate(data.rfind(b"\n") + 1)

    def _check_line(self, line: Mapping[str, Any], where: str, known: set[str]) -> None:
        recorded = (line.get("teacher"), line.get("endpoint"), line.get("sampling"))
        wanted = (self.settings.teacher, self.settings.endpoint, self.settings.sampling())
        if recorded != wanted:
            why = f"generated by {_describe(*recorded)}, but spec.generation now asks {_describe(*wanted)}"
        elif line.get("sample", 0) >= self.samples_per_prompt:
            why = (
                f"sample {line['sample']} of its prompt, but spec.generation.samplesPerPrompt is now "
                f"{self.samples_per_prompt}"
            )
        elif line.get("finishReason") == CUT_OFF and not self.keep_truncated:
            why = "a response cut off at maxNewTokens, kept when spec.generation.keepTruncated was true"
        elif line.get("promptId") not in known:
            why = "answers a prompt that is no longer in spec.data.train"
        else:
            return
        raise GenerationRefused(
            f"{where}: {why}; delete {self.path} (or write to another output) to generate again"
        )

    def line(self, prompt: Prompt, sample: int, response: Response) -> dict[str, Any]:
        return {
            "messages": [*prompt.messages, {"role": "assistant", "content": response.text}],
            **prompt.carried,
            "prompt": prompt.messages,
            "response": response.text,
            "teacher": self.settings.teacher,
            "endpoint": self.settings.endpoint,
            "sampling": self.settings.sampling(),
            "sample": sample,
            "finishReason": response.finish_reason,
            "promptId": prompt.id,
            "source": prompt.source,
        }

    def append(self, line: Mapping[str, Any]) -> None:
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(descriptor, data)
            if written != len(data):
                raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
        finally:
            os.close(descriptor)

    def finish(self, prompts: list[Prompt], skipped: list[Skipped], report: dict[str, Any]) -> dict[str, Any]:
        """Sort the file by prompt; write the skipped pairs and the report (the mark of a finished run)."""
        order = {prompt.id: index for index, prompt in enumerate(prompts)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        keyed = sorted(
            (order[(record := json.loads(text))["promptId"]], record["sample"], text) for text in lines
        )
        _replace(self.path, "".join(f"{text}\n" for _, _, text in keyed))
        _replace(
            self.skipped_path, "".join(json.dumps(asdict(s), ensure_ascii=False) + "\n" for s in skipped)
        )
        full = {
            "settings": asdict(self.settings),
            "samplesPerPrompt": self.samples_per_prompt,
            "keepTruncated": self.keep_truncated,
            **report,
            "generated": len(keyed),
            "skipped": dict(Counter(s.reason for s in skipped)),
        }
        _replace(self.report_path, json.dumps(full, indent=2) + "\n")
        return full


def _replace(path: Path, text: str) -> None:
    # Written beside and renamed over: a crash leaves the old file or the new one, never half of either.
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def _describe(teacher: Any, endpoint: Any, sampling: Any) -> str:
    where = f" at {endpoint}" if endpoint else ""
    return f"{teacher}{where} with {json.dumps(sampling, sort_keys=True)}"
