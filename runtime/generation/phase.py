"""The generation phase, from the job to the file training reads: prompts -> missing (prompt, sample)
pairs -> the teacher (own engines or an endpoint) -> appended lines -> report; then the job that trains on
the file (`training_job`)."""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kubedistill.api.generation import OWN_TEACHER_TEMPERATURE, OWN_TEACHER_TOP_P, answer_timeout_seconds
from kubedistill.api.job import DistillationJob
from kubedistill.api.spec import DataFormat, DataSource, Mode
from kubedistill.runtime.data.chat import ChatFormat, Message, encode_chat
from kubedistill.runtime.data.tokenize import student_chat_format
from kubedistill.runtime.generation.logprobs import Unmapped, scored_targets, sparse_targets, vocabulary_bytes
from kubedistill.runtime.generation.prompts import Prompt, Prompts, read_prompts
from kubedistill.runtime.generation.store import (
    FAILED,
    FINISHED,
    GeneratedFile,
    Response,
    Settings,
    Skipped,
    Usage,
    verdict,
)

log = logging.getLogger(__name__)

GENERATED_DIR = "generated"
PROGRESS_EVERY_SECONDS = 30.0
"""A progress line at least this often while answers arrive, besides one per tenth of the pairs."""


@dataclass
class GenerationProgress:
    """Where the phase stands, earlier runs' pairs included; what the log lines and /metrics show."""

    pairs: int
    """Every (prompt, sample) pair the job asks for."""
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    usage: Usage = field(default_factory=Usage)

    @classmethod
    def resuming(
        cls,
        pairs: int,
        done: set[tuple[str, int]],
        skipped: list[Skipped],
        earlier: Mapping[str, Any] | None,
    ) -> "GenerationProgress":
        """Where a run starts: what the file holds and an earlier run skipped, the tokens it paid for."""
        return cls(
            pairs,
            kept=len(done),
            skipped=Counter(skip.reason for skip in skipped),
            usage=Usage.from_json(earlier.get("usage")) if earlier else Usage(),
        )

    @property
    def done(self) -> int:
        return self.kept + self.skipped.total()

    def line(self) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())
        return (
            f"generation: {self.done} of {self.pairs} pairs done, {self.kept} kept"
            + (f", skipped: {reasons}" if reasons else "")
            + _tokens(self.usage, "; {} prompt and {} completion tokens")
        )


@dataclass(frozen=True)
class GenerationResult:
    path: Path
    """The generated training records."""
    report: dict[str, Any]
    reused: bool
    """A finished generation of these settings was found and used as it is."""

    def summary(self) -> str:
        report = self.report
        skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(report["skipped"].items()))
        how = "reused" if self.reused else f"{report['generated'] - report['reusedLines']} new"
        usage = Usage.from_json(report.get("usage"))
        return (
            f"generation: {report['generated']} responses to {report['prompts']} prompts in {self.path} "
            f"({how}); skipped: {skipped or 'none'}"
            + (f" (listed in {self.skipped_path})" if skipped else "")
            + _tokens(usage, "; tokens: {} prompt, {} completion")
            + _repeated(report.get("repeatedPrompts", []))
        )

    @property
    def skipped_path(self) -> Path:
        return self.path.with_suffix(".skipped.jsonl")

    def problem(self, min_kept_fraction: float) -> str | None:
        """Why training must not start on this file (a `field: problem` line), or None."""
        report = self.report
        skipped: dict[str, int] = report["skipped"]
        pairs, kept = report["pairs"], report["generated"]
        if not report["finished"]:
            return (
                f"spec.generation.endpoint: {skipped[FAILED]} of {pairs} requests still failed after "
                f"their retries (e.g. {report['skippedExamples'][FAILED]}); the {kept} answers so far are "
                f"kept in {self.path}, and a rerun asks only the failed pairs again (KubeRay's retries do "
                f"so): rerun once the endpoint answers, or raise endpoint.maxRetries; see {self.skipped_path}"
            )
        if not kept:
            return f"spec.generation: no response was kept (see {self.skipped_path}); nothing to train on"
        if kept < min_kept_fraction * pairs:
            reason, count = Counter(skipped).most_common(1)[0]
            return (
                f"spec.generation.minKeptFraction: {kept} of {pairs} (prompt, sample) pairs became training "
                f"records ({kept / pairs:.0%}), fewer than {min_kept_fraction:g}; most skipped: {count} "
                f"{reason} (e.g. {report['skippedExamples'][reason] or reason}); see {self.skipped_path}"
            )
        return None


UNMAPPED = "unmapped"
"""The skip reason of a response whose tokens are not the student's (spec.generation.topLogprobs)."""
NO_LOGPROBS = "noLogprobs"
"""The skip reason of an answer without the log-probabilities asked for."""
UNRENDERED = "unrendered"
"""The skip reason of a record whose answer the student's chat template cannot render (scoreAnswers)."""


@dataclass(frozen=True)
class ScoredChat:
    """A record's chat as the student's ids and the positions training learns (spec.generation.scoreAnswers):
    what the endpoint scores, so that its scores line up with the targets one for one."""

    ids: list[int]
    positions: list[int]


def scored_chat(prompt: Prompt, tokenizer: Any, chat_format: ChatFormat) -> ScoredChat:
    """Rendered as the data pipeline renders it for training (`encode_chat`, every assistant message a target,
    its end-of-turn token included); up to the last target, since nothing after it is scored."""
    encoded = encode_chat(
        tokenizer,
        [*prompt.messages, *prompt.answer],
        first_response=0,
        add_generation_prompt=False,
        tools=prompt.carried.get("tools"),
        chat_format=chat_format,
    )
    positions = [int(position) for position in encoded.mask.nonzero()[0]]
    if not positions or positions[0] == 0:
        raise ValueError("the chat template renders no answer token to score")
    return ScoredChat([int(token) for token in encoded.ids[: positions[-1] + 1]], positions)


def with_scored_targets(
    response: Response, chat: ScoredChat, k: int, table: Mapping[bytes, int | None]
) -> tuple[Response, str | None, str]:
    """The endpoint's scores of the chat's targets in the student's ids; or why it is skipped, and why."""
    if response.scores is None:
        return response, NO_LOGPROBS, "the endpoint returned no logprobs"
    try:
        targets = scored_targets(response.scores, chat.ids, chat.positions, k, table)
    except Unmapped as error:
        return (
            response,
            UNMAPPED,
            f"{error} (spec.generation.scoreAnswers needs the endpoint model's tokenizer as spec.student's)",
        )
    return replace(response, scores=None, targets=targets), None, ""


def _student_vocabulary(job: DistillationJob) -> tuple[Any, dict[bytes, int | None]]:
    from kubedistill.runtime.models.loading import load_tokenizer
    from kubedistill.runtime.models.roles import student_tokenizer_path

    tokenizer = load_tokenizer(student_tokenizer_path(job))
    return tokenizer, vocabulary_bytes(tokenizer)


def with_sparse_targets(
    response: Response, tokenizer: Any, table: Mapping[bytes, int | None]
) -> tuple[Response, str | None, str]:
    """The response with its log-probabilities in the student's ids; or why it is skipped, and the detail."""
    if not response.logprobs:
        return response, NO_LOGPROBS, "the endpoint returned no logprobs (transformers serve ignores them)"
    try:
        targets = sparse_targets(response.logprobs, tokenizer, table)
    except Unmapped as error:
        return (
            response,
            UNMAPPED,
            f"{error} (spec.generation.topLogprobs needs the endpoint model's tokenizer as spec.student's)",
        )
    return replace(response, logprobs=None, targets=targets), None, ""


def _tokens(usage: Usage, form: str) -> str:
    """What an endpoint billed, in `form`; nothing for the job's own teacher, which bills none."""
    if usage == Usage():
        return ""
    return form.format(usage.prompt_tokens, usage.completion_tokens)


def _repeated(sources: list[str]) -> str:
    if not sources:
        return ""
    return f"; {len(sources)} records repeat an earlier prompt, asked once: {', '.join(sources[:3])}" + (
        ", ..." if len(sources) > 3 else ""
    )


def settings_of(job: DistillationJob) -> Settings:
    spec = job.spec
    generation = spec.generation
    if generation is None:
        raise ValueError("spec.generation: not set")
    endpoint = generation.endpoint
    teacher = endpoint.model if endpoint else (spec.teacher.model if spec.teacher else None)
    if teacher is None:
        raise ValueError("spec.teacher.model: required when spec.generation has no endpoint")
    temperature, top_p = generation.temperature, generation.top_p
    if endpoint is None:
        # The job's own engines need values; an endpoint is sent only what the manifest sets.
        temperature = OWN_TEACHER_TEMPERATURE if temperature is None else temperature
        top_p = OWN_TEACHER_TOP_P if top_p is None else top_p
    return Settings(
        teacher=teacher,
        endpoint=endpoint.base_url if endpoint else None,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=generation.max_new_tokens,
        seed=spec.training.seed if generation.seed is None else generation.seed,
        top_logprobs=generation.top_logprobs,
        score_answers=generation.score_answers,
        step=chain_of_thought(job),
    )


def chain_of_thought(job: DistillationJob) -> dict[str, Any] | None:
    """The chainOfThought step's template, which the answers are asked with; None without that step."""
    from kubedistill.api.generation import StepKind
    from kubedistill.runtime.generation.steps import step_template

    assert job.spec.generation is not None
    for index, step in enumerate(job.spec.generation.steps):
        if step.kind == StepKind.CHAIN_OF_THOUGHT:
            return {"kind": str(step.kind), "template": step_template(step, index)}
    return None


def generated_file(job: DistillationJob, output_dir: Path) -> GeneratedFile:
    generation = job.spec.generation
    assert generation is not None
    return GeneratedFile(
        output_dir / GENERATED_DIR,
        job.name,
        settings_of(job),
        generation.samples_per_prompt,
        generation.keep_truncated,
        generation.keep_reasoning,
    )


def run_generation(
    job: DistillationJob,
    output_dir: Path,
    environ: Mapping[str, str],
    *,
    backoff_seconds: float = 0.5,
    on_progress: Callable[[GenerationProgress], None] | None = None,
    read: Prompts | None = None,
    ask: Callable[[Prompt], list[Message]] | None = None,
    own_teacher: "OwnTeacher | None" = None,
) -> GenerationResult:
    """Generate what the file lacks (own teacher: Ray must be connected), then finish the file.

    `on_progress` sees the counts after every answer (the /metrics gauges); a log line says them every
    tenth of the pairs or PROGRESS_EVERY_SECONDS. `read`: the prompts when steps made them (else
    spec.data.train's); `ask`: what the teacher is sent for a prompt (a chainOfThought step's template), the
    record keeping the prompt itself; `own_teacher`: engines the steps share (else started here)."""
    generation = job.spec.generation
    assert generation is not None
    store = generated_file(job, output_dir)
    report = store.report()
    if report is not None:
        return GenerationResult(store.path, report, reused=True)
    if read is None:
        # A rule refuses spec.data.mixture with spec.generation, so its prompts are spec.data.train's.
        assert job.spec.data.train is not None
        read = read_prompts(
            job.spec.data.train, job.spec.data.on_bad_record, answers=generation.score_answers
        )
    prompts = read.prompts
    by_id = {prompt.id: prompt for prompt in prompts}
    done, skipped, missing, todo = store.outstanding(prompts)
    samples = generation.samples_per_prompt
    progress = GenerationProgress.resuming(len(prompts) * samples, done, skipped, store.earlier())
    log.info(
        "generation: %d of %d (prompt, sample) pairs to generate into %s",
        progress.pairs - progress.done,
        progress.pairs,
        store.path,
    )
    shown = (progress.done, time.monotonic())
    to_student = _student_vocabulary(job) if generation.top_logprobs is not None else None
    chats: dict[str, ScoredChat] = {}

    def keep(
        asked: Prompt, sample: int, response: Response | None, failure: str = "", why: str = FAILED
    ) -> None:
        nonlocal shown
        prompt = by_id[asked.id]
        if response is not None:
            progress.usage += response.usage
        if response is not None and prompt.id in chats:
            # The data's own answer: kept whatever the (empty) completion's finish.
            assert to_student is not None and generation.top_logprobs is not None, "a rule asks topLogprobs"
            content = prompt.answer[-1].get("content")
            text = content if isinstance(content, str) else ""
            response, reason, failure = with_scored_targets(
                replace(response, text=text, finish_reason=FINISHED),
                chats[prompt.id],
                generation.top_logprobs,
                to_student[1],
            )
        elif response is not None:
            reason = verdict(response, generation.keep_truncated)
            if reason is None and to_student is not None:
                response, reason, failure = with_sparse_targets(response, *to_student)
        else:
            reason = why
        if reason is None and response is not None:
            store.append(store.line(prompt, sample, response))
            progress.kept += 1
        else:
            detail = failure or (f"finish_reason {response.finish_reason}" if response else "")
            skipped.append(Skipped(prompt.id, sample, prompt.source, reason or FAILED, detail))
            progress.skipped[reason or FAILED] += 1
        if on_progress is not None:
            on_progress(progress)
        now = time.monotonic()
        tenth = max(1, progress.pairs // 10)
        if progress.done - shown[0] >= tenth or now - shown[1] >= PROGRESS_EVERY_SECONDS:
            log.info("%s", progress.line())
            shown = (progress.done, now)

    if generation.score_answers and to_student is not None:
        chat_format = student_chat_format(job.spec.data)
        for prompt in list(todo):
            try:
                chats[prompt.id] = scored_chat(prompt, to_student[0], chat_format)
            except ValueError as error:
                todo.remove(prompt)
                keep(prompt, 0, None, str(error), UNRENDERED)
    if on_progress is not None:
        on_progress(progress)
    if ask is not None:
        todo = [replace(prompt, messages=ask(prompt)) for prompt in todo]
    if todo and generation.endpoint is not None:
        asyncio.run(
            ask_endpoint(job, store.settings, todo, missing, environ, keep, backoff_seconds, progress, chats)
        )
    elif todo:
        teacher = own_teacher or OwnTeacher(job)
        try:
            teacher.generate(store.settings, todo, missing, samples, keep)
        finally:
            if own_teacher is None:
                teacher.shutdown()
    report = store.finish(
        prompts,
        skipped,
        {
            "prompts": len(prompts),
            "reusedLines": len(done),
            "repeatedPrompts": read.repeated,
            "badRecords": [str(record) for record in read.bad],
        },
        progress.usage,
    )
    return GenerationResult(store.path, report, reused=False)


async def ask_endpoint(
    job: DistillationJob,
    settings: Settings,
    prompts: list[Prompt],
    missing: dict[str, list[int]],
    environ: Mapping[str, str],
    keep: Any,
    backoff_seconds: float,
    progress: GenerationProgress,
    chats: Mapping[str, ScoredChat],
) -> None:
    from kubedistill.runtime.generation.endpoint import ChatCompletionsClient, Request, ScoringClient

    generation = job.spec.generation
    assert generation is not None and generation.endpoint is not None, (
        "called only for a job whose spec.generation names an endpoint"
    )
    endpoint = generation.endpoint
    api_key = environ.get(endpoint.api_key.env) if endpoint.api_key else None
    timeout = answer_timeout_seconds(endpoint, generation.max_new_tokens)
    kind = ScoringClient if generation.score_answers else ChatCompletionsClient
    client = kind(endpoint, settings, api_key, timeout, backoff_seconds)
    by_id = {prompt.id: prompt for prompt in prompts}
    requests = [
        Request(
            (prompt.id, sample),
            prompt.messages,
            settings.seed + sample,
            prompt.carried.get("tools"),
            tuple(chats[prompt.id].ids) if prompt.id in chats else (),
        )
        for prompt in prompts
        for sample in missing[prompt.id]
    ]

    async def report_retries() -> None:
        # Answers may stop arriving for minutes (an endpoint that is down): say what is being retried.
        while True:
            await asyncio.sleep(PROGRESS_EVERY_SECONDS)
            if client.retrying:
                failure = next(iter(client.retrying.values()))
                log.info("%s; waiting to retry: %d (e.g. %s)", progress.line(), len(client.retrying), failure)

    reporter = asyncio.ensure_future(report_retries())
    try:
        async for outcome in client.complete_all(requests):
            prompt_id, sample = outcome.key
            keep(by_id[prompt_id], sample, outcome.response, outcome.failure, outcome.reason)
    finally:
        reporter.cancel()


class OwnTeacher:
    """The job's own teacher on its engines, started at its first question and kept for the next (the steps
    of spec.generation ask it in turn) until `shutdown`."""

    def __init__(self, job: DistillationJob) -> None:
        self._job = job
        self._generators: Any = None

    def generate(
        self,
        settings: Settings,
        prompts: list[Prompt],
        missing: dict[str, list[int]],
        samples: int,
        keep: Any,
    ) -> None:
        from kubedistill.runtime.cluster.placement import ClusterView
        from kubedistill.runtime.generation.engine import TeacherGenerators

        if self._generators is None:
            self._generators = TeacherGenerators(self._job, ClusterView.current())
        for prompt, sample, response in self._generators.generate(prompts, missing, settings, samples):
            keep(prompt, sample, response)

    def shutdown(self) -> None:
        # The teacher's GPUs go back before training starts (offPolicy starts its own teacher engines).
        if self._generators is not None:
            self._generators.shutdown()
            self._generators = None


def training_job(job: DistillationJob, generated: Path) -> DistillationJob:
    """The job training runs: spec.data.train is the generated file (preference: the pairs file); sft has no
    teacher any more, preference neither a teacher nor rollout engines."""
    spec = job.spec
    assert spec.data.train is not None, "a rule refuses spec.data.mixture with spec.generation"
    train = DataSource(
        path=str(generated),
        format=DataFormat.JSONL,
        teacher_input_key=spec.data.train.teacher_input_key,
    )
    changes: dict[str, Any] = {
        "generation": None,
        "data": spec.data.model_copy(update={"train": train}),
    }
    if spec.mode == Mode.SFT:
        changes["teacher"] = None
    if spec.mode == Mode.PREFERENCE:
        # The pairs are written: neither the teacher nor the rollout engines run in training.
        changes.update(teacher=None, rollout=None)
    return job.model_copy(update={"spec": spec.model_copy(update=changes)})
