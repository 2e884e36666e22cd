"""The generated dataset on disk: `<output>/generated/<job>.jsonl`, one line per (prompt, sample).

- Lines are appended as responses arrive, each with one `write` on a file opened for appending, so a run
  killed mid-way leaves whole lines and at most one partial last line; a rerun cuts that line off and
  generates only the (prompt, sample) pairs not yet in the file.
- A pair that is not a training record goes to `<job>.skipped.jsonl` with its reason, never silently away:
  `failed` (the request kept failing: the endpoint was down or overloaded), `rejected` (the endpoint answered
  this request with a 4xx), `empty`, `length` (cut off at maxNewTokens, unless keepTruncated), any other
  finish_reason (`content_filter`, SGLang's `abort`), and with topLogprobs `unmapped` (tokens that are not
  the student's) or `noLogprobs` (an answer without them). With scoreAnswers a line is a record's own answer
  with the teacher's scores, and `unrendered` skips one the student's chat template cannot render.
- When every pair is done, the file is rewritten in prompt order (so two runs of one job train on the same
  order) and `<job>.report.json` is written. Without `failed` pairs it is finished: a rerun reuses the file as
  it is, without asking again for the skipped pairs (which would change the data a checkpoint was trained
  on); delete the report to retry them, or the file to generate everything again. With `failed` pairs it is
  not: a rerun (KubeRay's retries, or the user's once the endpoint is back) asks those pairs again and only
  them, and training starts only once none is left.
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
from typing import Any, NamedTuple

from kubedistill.runtime.generation.logprobs import SparseTargets, TokenLogprobs
from kubedistill.runtime.generation.prompts import Prompt

FINISHED = "stop"
CUT_OFF = "length"
CALLS_TOOLS = "tool_calls"
"""The finish_reason of an answer that is a tool call (openai-python `types/chat/chat_completion.py`)."""
FAILED = "failed"
"""The skip reason of a pair whose request kept failing; the only one a rerun asks again."""
REJECTED = "rejected"


class GenerationRefused(ValueError):
    """The generated file on disk cannot be reused with this job; the message names it and what to do."""


@dataclass(frozen=True)
class Settings:
    """What a response depends on besides its prompt; recorded on every line."""

    teacher: str
    """The model id: spec.teacher.model, or the endpoint's model."""
    endpoint: str | None
    """The endpoint's baseUrl; None for the job's own teacher."""
    temperature: float | None
    """None: not sent (the endpoint's default)."""
    top_p: float | None
    max_new_tokens: int
    seed: int
    """Sample i of a prompt is drawn with seed + i."""
    top_logprobs: int | None = None
    """spec.generation.topLogprobs: the endpoint's top-k log-probabilities are asked and kept."""
    score_answers: bool = False
    """spec.generation.scoreAnswers: the data's own answers are scored instead of new ones generated."""
    step: Mapping[str, Any] | None = None
    """A step of spec.generation.steps (its kind, template and settings), or the chainOfThought template the
    answers are asked with: what the lines depend on besides the teacher's sampling."""

    def recorded(self) -> dict[str, Any]:
        """The settings as the report records them; topLogprobs and scoreAnswers only when asked, so that a
        finished generation from before those settings is still reused as it is."""
        fields = asdict(self)
        if self.top_logprobs is None:
            del fields["top_logprobs"]
        if not self.score_answers:
            del fields["score_answers"]
        if self.step is None:
            del fields["step"]
        return fields

    def sampling(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "topP": self.top_p,
            "maxNewTokens": self.max_new_tokens,
            "seed": self.seed,
            # Only when asked: the lines of files generated before this setting existed stay valid.
            **({"topLogprobs": self.top_logprobs} if self.top_logprobs is not None else {}),
            **({"scoreAnswers": True} if self.score_answers else {}),
            **({"step": dict(self.step)} if self.step is not None else {}),
        }


@dataclass(frozen=True)
class Usage:
    """Tokens an endpoint billed (its `usage`); zero for the job's own teacher."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens
        )

    def to_json(self) -> dict[str, int]:
        return {"promptTokens": self.prompt_tokens, "completionTokens": self.completion_tokens}

    @staticmethod
    def from_json(data: Mapping[str, Any] | None) -> "Usage":
        data = data or {}
        return Usage(int(data.get("promptTokens", 0)), int(data.get("completionTokens", 0)))


@dataclass(frozen=True)
class Response:
    text: str
    finish_reason: str
    """OpenAI's: `stop` (the model ended it), `length` (cut at maxNewTokens), `tool_calls`, or another."""
    tool_calls: list[dict[str, Any]] | None = None
    """The tool calls the answer makes, in the OpenAI wire format (`arguments` a JSON string)."""
    reasoning: str | None = None
    """A reasoning teacher's thinking, apart from its answer."""
    usage: Usage = Usage()
    logprobs: list[TokenLogprobs] | None = None
    """Every generated token (thinking and tool calls included) with the endpoint's top-k, when asked."""
    targets: SparseTargets | None = None
    """`logprobs` in the student's token ids (set by the phase, which holds the student's tokenizer)."""
    scores: Mapping[str, Any] | None = None
    """scoreAnswers: the completion's `logprobs` over the chat sent (legacy form), mapped by the phase."""


@dataclass(frozen=True)
class Skipped:
    prompt_id: str
    sample: int
    source: str
    reason: str
    """`failed`, `rejected`, `empty`, or the finish_reason of an answer not kept (module docstring)."""
    detail: str


def verdict(response: Response, keep_truncated: bool) -> str | None:
    """Why a response is not a training record (a `Skipped.reason`), or None to keep it.

    Only answers the model ended are kept (and cut-off ones when asked): `content_filter` is a refusal or a
    redacted answer, SGLang's `abort` an answer the server dropped (SGLang 0.5.23
    `srt/entrypoints/openai/protocol.py:1307-1316`), and whatever else a server may add is not known good."""
    kept = {FINISHED, CALLS_TOOLS} | ({CUT_OFF} if keep_truncated else set())
    if response.finish_reason not in kept:
        return response.finish_reason
    if not response.text.strip() and not response.tool_calls:
        return "empty"
    return None


class Outstanding(NamedTuple):
    """What a file holds and lacks for some prompts: what a run asks, and what it counts as done."""

    done: set[tuple[str, int]]
    """(prompt id, sample) pairs already in the file."""
    skipped: list[Skipped]
    """Pairs an earlier run skipped for good (`GeneratedFile.settled`); the run adds its own skips."""
    missing: dict[str, list[int]]
    """Each prompt's samples neither in the file nor skipped for good."""
    todo: list[Prompt]
    """The prompts with a missing sample, in their order."""


class GeneratedFile:
    def __init__(
        self,
        directory: Path,
        name: str,
        settings: Settings,
        samples_per_prompt: int,
        keep_truncated: bool,
        keep_reasoning: bool = True,
    ) -> None:
        self.path = directory / f"{name}.jsonl"
        self.skipped_path = directory / f"{name}.skipped.jsonl"
        self.report_path = directory / f"{name}.report.json"
        self.settings = settings
        self.samples_per_prompt = samples_per_prompt
        self.keep_truncated = keep_truncated
        self.keep_reasoning = keep_reasoning

    def report(self) -> dict[str, Any] | None:
        """The report of a finished generation with these settings; None when none finished."""
        report = self.earlier()
        return report if report is not None and report.get("finished") is True else None

    def earlier(self) -> dict[str, Any] | None:
        """The report of an earlier run with these settings, finished or not (failed pairs left)."""
        if not self.report_path.is_file() or not self.path.is_file():
            return None
        report = json.loads(self.report_path.read_text(encoding="utf-8"))
        same = (
            report.get("settings"),
            report.get("samplesPerPrompt"),
            report.get("keepTruncated"),
            report.get("keepReasoning"),
        )
        # Other numbers of samples or another keepTruncated: the lines are checked one by one instead, and
        # what is missing is generated.
        wanted = (self.settings.recorded(), self.samples_per_prompt, self.keep_truncated, self.keep_reasoning)
        return report if same == wanted else None

    def outstanding(self, prompts: list[Prompt]) -> Outstanding:
        """What these prompts' samples the file holds, skipped for good, or still lacks."""
        done = self.existing(prompts)
        skipped = self.settled(prompts)
        asked = done | {(skip.prompt_id, skip.sample) for skip in skipped}
        missing = {
            p.id: [s for s in range(self.samples_per_prompt) if (p.id, s) not in asked] for p in prompts
        }
        return Outstanding(done, skipped, missing, [p for p in prompts if missing[p.id]])

    def settled(self, prompts: Iterable[Prompt]) -> list[Skipped]:
        """The pairs an earlier run of these settings skipped for good (every reason but `failed`): a
        rerun counts them again instead of paying for the same answer twice."""
        if self.earlier() is None or not self.skipped_path.is_file():
            return []
        known = {prompt.id for prompt in prompts}
        lines = self.skipped_path.read_text(encoding="utf-8").splitlines()
        return [
            skip
            for skip in (Skipped(**json.loads(text)) for text in lines)
            if skip.reason != FAILED and skip.prompt_id in known and skip.sample < self.samples_per_prompt
        ]

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
        elif line.get("reasoning") and _keeps_reasoning(line) != self.keep_reasoning:
            was = "true" if _keeps_reasoning(line) else "false"
            why = f"an answer written when spec.generation.keepReasoning was {was}"
        elif line.get("promptId") not in known:
            why = "answers a prompt that is no longer in spec.data.train"
        else:
            return
        raise GenerationRefused(
            f"{where}: {why}; delete {self.path} (or write to another output) to generate again"
        )

    def line(self, prompt: Prompt, sample: int, response: Response) -> dict[str, Any]:
        # A scored answer (scoreAnswers) stays as the record wrote it, tool turns included, so that training
        # renders exactly the tokens the teacher scored.
        answer = prompt.answer or [self._answer(response)]
        return {
            "messages": [*prompt.messages, *answer],
            **prompt.carried,
            "prompt": prompt.messages,
            "response": response.text,
            **({"reasoning": response.reasoning} if response.reasoning else {}),
            "teacher": self.settings.teacher,
            "endpoint": self.settings.endpoint,
            "sampling": self.settings.sampling(),
            "sample": sample,
            "finishReason": response.finish_reason,
            **({"teacherLogprobs": response.targets.to_json()} if response.targets is not None else {}),
            "promptId": prompt.id,
            "source": prompt.source,
        }

    def _answer(self, response: Response) -> dict[str, Any]:
        answer: dict[str, Any] = {"role": "assistant", "content": response.text}
        if response.tool_calls:
            # null, not "": the content of a message that only calls tools (what the API and templates
            # such as DeepSeek's read); the data pipeline reads the calls' JSON-text arguments.
            calls = response.tool_calls
            answer = {"role": "assistant", "content": response.text or None, "tool_calls": calls}
        if response.reasoning and self.keep_reasoning:
            answer["reasoning_content"] = response.reasoning
        return answer

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

    def finish(
        self, prompts: list[Prompt], skipped: list[Skipped], report: dict[str, Any], usage: Usage
    ) -> dict[str, Any]:
        """Sort the file by prompt; write the skipped pairs and the report (the mark of a finished run, when
        no pair failed). `usage`: the tokens of every run of this generation so far."""
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
            "settings": self.settings.recorded(),
            "samplesPerPrompt": self.samples_per_prompt,
            "keepTruncated": self.keep_truncated,
            "keepReasoning": self.keep_reasoning,
            **report,
            "finished": not any(s.reason == FAILED for s in skipped),
            "pairs": len(prompts) * self.samples_per_prompt,
            "generated": len(keyed),
            "skipped": dict(Counter(s.reason for s in skipped)),
            "skippedExamples": {s.reason: s.detail for s in reversed(skipped)},
            "usage": usage.to_json(),
        }
        _replace(self.report_path, json.dumps(full, indent=2) + "\n")
        return full


def _replace(path: Path, text: str) -> None:
    # Written beside and renamed over: a crash leaves the old file or the new one, never half of either.
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def _keeps_reasoning(line: Mapping[str, Any]) -> bool:
    messages = line.get("messages") or [{}]
    return "reasoning_content" in messages[-1]


def _describe(teacher: Any, endpoint: Any, sampling: Any) -> str:
    where = f" at {endpoint}" if endpoint else ""
    return f"{teacher}{where} with {json.dumps(sampling, sort_keys=True)}"
