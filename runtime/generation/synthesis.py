"""The generation phase with spec.generation.steps: instruction steps -> answers -> answer steps, each step
a file of its own, `<output>/generated/<job>.step<i>-<kind>.jsonl`, written, resumed, counted and skipped as
the answers' file is (`store.GeneratedFile`: keyed lines, a rerun asks only what is missing, a finished
step is reused as it is), over the endpoint or the job's own teacher (started once for every step).

A step's line is a record the next stage reads: a prompt (instruction steps), or a prompt with its answer
(answer steps), keyed by the item it answers (a prompt; instructionExpansion's seed and sample), with the
teacher's reply, the judge's score, and the settings it was made with (its template included: a rerun with
another is refused naming the file). The student trains on the last answer step's file.
"""

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kubedistill.api.generation import INSTRUCTION_STEPS, GenerationStep, ScoreFrom, StepKind
from kubedistill.api.job import DistillationJob
from kubedistill.api.spec import DataFormat, DataSource, OnBadRecord
from kubedistill.runtime.data.chat import Message
from kubedistill.runtime.generation.endpoint import EndpointRefused
from kubedistill.runtime.generation.phase import (
    GENERATED_DIR,
    GenerationProgress,
    GenerationResult,
    OwnTeacher,
    ask_endpoint,
    chain_of_thought,
    generated_file,
    run_generation,
    settings_of,
)
from kubedistill.runtime.generation.prompts import Prompt, Prompts, read_prompts
from kubedistill.runtime.generation.steps import (
    JUDGE_TOP_LOGPROBS,
    Made,
    StepItem,
    instruction_of,
    made_of,
    render,
    samples_of,
    step_items,
    step_template,
)
from kubedistill.runtime.generation.store import (
    FAILED,
    GeneratedFile,
    Response,
    Settings,
    Skipped,
    verdict,
)

log = logging.getLogger(__name__)


class StepFailed(ValueError):
    """A step left nothing to go on with, or requests that still failed; one `field: problem` line."""


@dataclass(frozen=True)
class StepResult:
    index: int
    kind: StepKind
    path: Path
    report: dict[str, Any]
    reused: bool

    @property
    def field(self) -> str:
        return f"spec.generation.steps[{self.index}]"

    @property
    def skipped_path(self) -> Path:
        return self.path.with_suffix(".skipped.jsonl")

    def summary(self) -> str:
        report = self.report
        skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(report["skipped"].items()))
        how = "reused" if self.reused else f"{report['generated'] - report['reusedLines']} new"
        return (
            f"generation step {self.index} ({self.kind}): {report['generated']} of {report['pairs']} kept "
            f"from {report['inputs']} records in {self.path} ({how}); skipped: {skipped or 'none'}"
            + (f" (listed in {self.skipped_path})" if skipped else "")
        )

    def problem(self) -> str | None:
        report = self.report
        if not report["finished"]:
            return (
                f"{self.field}: {report['skipped'][FAILED]} of {report['pairs']} requests still failed after "
                f"their retries (e.g. {report['skippedExamples'][FAILED]}); a rerun asks only those again; "
                f"see {self.skipped_path}"
            )
        if not report["generated"]:
            return f"{self.field}: no record was kept (see {self.skipped_path}); nothing to go on with"
        return None

    def counts(self) -> dict[str, Any]:
        """What summary.json says of the step."""
        report = self.report
        return {
            "kind": str(self.kind),
            "file": str(self.path),
            "inputs": report["inputs"],
            "asked": report["pairs"],
            "kept": report["generated"],
            "skipped": report["skipped"],
        }


@dataclass(frozen=True)
class PhaseResult:
    steps: list[StepResult]
    answers: GenerationResult
    path: Path
    """The records training reads: the last answer step's, or the answers'."""


def run_phase(
    job: DistillationJob,
    output_dir: Path,
    environ: Mapping[str, str],
    *,
    echo: Callable[[str], None],
    backoff_seconds: float = 0.5,
    on_progress: Callable[[GenerationProgress], None] | None = None,
) -> PhaseResult:
    """The whole phase; `echo` gets each step's summary line, and the answers', as it finishes. StepFailed
    where a step leaves nothing to go on with; the answers' own problems are the caller's
    (`GenerationResult.problem`)."""
    generation = job.spec.generation
    assert generation is not None and job.spec.data.train is not None, "a rule refuses data.mixture here"
    train = job.spec.data.train
    own = OwnTeacher(job) if generation.endpoint is None else None
    results: list[StepResult] = []

    def step(index: int, kind: GenerationStep, inputs: list[Prompt]) -> Prompts:
        result, outputs = run_step(job, output_dir, environ, index, kind, inputs, own, backoff_seconds)
        results.append(result)
        echo(result.summary())
        problem = result.problem()
        if problem is not None:
            raise StepFailed(problem)
        return outputs

    try:
        read = read_prompts(train, job.spec.data.on_bad_record, answers=generation.score_answers)
        for index, kind in enumerate(generation.steps):
            if kind.kind in INSTRUCTION_STEPS:
                made = step(index, kind, read.prompts)
                read = _with_seeds(read, made) if kind.kind == StepKind.INSTRUCTION_EXPANSION else made
        cot = chain_of_thought(job)
        template = None if cot is None else str(cot["template"])
        answers = run_generation(
            job,
            output_dir,
            environ,
            backoff_seconds=backoff_seconds,
            on_progress=on_progress,
            read=read,
            ask=(lambda prompt: _asked(template, prompt)) if template is not None else None,
            own_teacher=own,
        )
        echo(answers.summary())
        path = answers.path
        for index, kind in enumerate(generation.steps):
            if kind.kind in INSTRUCTION_STEPS or kind.kind == StepKind.CHAIN_OF_THOUGHT:
                continue
            if answers.problem(generation.min_kept_fraction) is not None:
                break
            records = _read(path, train, f"spec.generation.steps[{index}]", answers=True)
            step(index, kind, records.prompts)
            path = results[-1].path
    finally:
        if own is not None:
            own.shutdown()
    return PhaseResult(results, answers, path)


def _asked(template: str, prompt: Prompt) -> list[Message]:
    """chainOfThought: the last user message sent inside the template; the record keeps the question, which
    is what the student is asked at inference (EasyDistill keeps the wrapped prompt,
    `cot_synthesis.py:58`)."""
    return [*prompt.messages[:-1], *render(template, instruction=instruction_of(prompt))]


def _read(path: Path, train: DataSource, field: str, answers: bool) -> Prompts:
    source = DataSource(path=str(path), format=DataFormat.JSONL, teacher_input_key=train.teacher_input_key)
    return read_prompts(source, OnBadRecord.FAIL, field, answers=answers)


def _with_seeds(seeds: Prompts, made: Prompts) -> Prompts:
    """instructionExpansion keeps the seeds; a new prompt that repeats one is counted as repeated, once."""
    known = {prompt.id for prompt in seeds.prompts}
    new = [prompt for prompt in made.prompts if prompt.id not in known]
    repeated = [prompt.source for prompt in made.prompts if prompt.id in known]
    return Prompts([*seeds.prompts, *new], [*seeds.repeated, *made.repeated, *repeated], seeds.bad)


class StepFile(GeneratedFile):
    def record(self, item: StepItem, sample: int, made: Made, response: Response) -> dict[str, Any]:
        assert made.messages is not None
        return {
            "messages": made.messages,
            **item.source.carried,
            "reply": response.text,
            **({"score": made.score} if made.score is not None else {}),
            "teacher": self.settings.teacher,
            "endpoint": self.settings.endpoint,
            "sampling": self.settings.sampling(),
            "sample": sample,
            "finishReason": response.finish_reason,
            "promptId": item.id,
            "source": item.source.source,
        }


_SETTINGS = {
    StepKind.INSTRUCTION_EXPANSION: ("new_per_seed", "examples", "answer_tag"),
    StepKind.INSTRUCTION_REFINEMENT: ("answer_tag",),
    StepKind.JUDGE: ("threshold", "score_from"),
}
"""The settings a kind's lines depend on besides its template (others may change without refusing them)."""


def step_settings(job: DistillationJob, step: GenerationStep, template: str) -> Settings:
    """The teacher's sampling, and the step with its template as sent: what a line of the step depends on."""
    logprobs = step.kind == StepKind.JUDGE and step.score_from == ScoreFrom.LOGPROBS
    recorded = step.model_dump(mode="json", by_alias=True, include={"kind", *_SETTINGS.get(step.kind, ())})
    return replace(
        settings_of(job),
        top_logprobs=JUDGE_TOP_LOGPROBS if logprobs else None,
        score_answers=False,
        step={**recorded, "template": template},
    )


def step_file(job: DistillationJob, output_dir: Path, index: int, step: GenerationStep) -> StepFile:
    generation = job.spec.generation
    assert generation is not None
    return StepFile(
        output_dir / GENERATED_DIR,
        f"{job.name}.step{index}-{step.kind}",
        step_settings(job, step, step_template(step, index)),
        samples_of(step),
        generation.keep_truncated,
        generation.keep_reasoning,
    )


def phase_finished(job: DistillationJob, output_dir: Path) -> bool:
    """Every step and the answers finished by an earlier run: nothing will be asked (no teacher, no
    endpoint needed)."""
    assert job.spec.generation is not None
    steps = [
        step_file(job, output_dir, index, step)
        for index, step in enumerate(job.spec.generation.steps)
        if step.kind != StepKind.CHAIN_OF_THOUGHT
    ]
    return all(store.report() is not None for store in [generated_file(job, output_dir), *steps])


def run_step(
    job: DistillationJob,
    output_dir: Path,
    environ: Mapping[str, str],
    index: int,
    step: GenerationStep,
    inputs: list[Prompt],
    own: OwnTeacher | None,
    backoff_seconds: float = 0.5,
) -> tuple[StepResult, Prompts]:
    """Ask what the step's file lacks, finish the file; the result and the records it holds."""
    generation = job.spec.generation
    assert generation is not None
    template = step_template(step, index)
    store = step_file(job, output_dir, index, step)
    settings, samples = store.settings, store.samples_per_prompt
    items = {item.id: item for item in step_items(step, template, inputs, settings.seed)}
    asked = [item.as_prompt() for item in items.values()]
    report = store.report()
    reused = report is not None
    if report is None:
        done, skipped, missing, todo = store.outstanding(asked)
        progress = GenerationProgress.resuming(len(asked) * samples, done, skipped, store.earlier())
        log.info("generation step %d (%s): %d of %d to ask", index, step.kind, len(todo), len(asked))

        def keep(
            prompt: Prompt, sample: int, response: Response | None, failure: str = "", why: str = FAILED
        ) -> None:
            item = items[prompt.id]
            reason: str | None = why
            if response is not None:
                progress.usage += response.usage
                reason = verdict(response, generation.keep_truncated)
                failure = f"finish_reason {response.finish_reason}"
                if reason is None:
                    made = made_of(step, item, response.text, response.logprobs)
                    if made.messages is not None:
                        store.append(store.record(item, sample, made, response))
                        progress.kept += 1
                        return
                    reason, failure = made.reason, made.detail
            assert reason is not None
            skipped.append(Skipped(item.id, sample, item.source.source, reason, failure))
            progress.skipped[reason] += 1

        if todo and generation.endpoint is not None:
            try:
                asyncio.run(
                    ask_endpoint(job, settings, todo, missing, environ, keep, backoff_seconds, progress, {})
                )
            except EndpointRefused as refused:
                # Its own first request: a template too long for the model is refused here, not the job's.
                raise EndpointRefused(
                    f"{refused} (asked by spec.generation.steps[{index}], {step.kind})"
                ) from None
        elif todo:
            assert own is not None, "the job's own teacher answers where there is no endpoint"
            own.generate(settings, todo, missing, samples, keep)
        report = store.finish(
            asked, skipped, {"inputs": len(inputs), "reusedLines": len(done)}, progress.usage
        )
    result = StepResult(index, step.kind, store.path, report, reused)
    if result.problem() is not None:
        return result, Prompts([], [], [])
    answers = step.kind not in INSTRUCTION_STEPS
    return result, _read(store.path, job.spec.data.train or DataSource(path="."), result.field, answers)
