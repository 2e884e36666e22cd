"""The generation phase, from the job to the file training reads: prompts -> missing (prompt, sample)
pairs -> the teacher (own engines or an endpoint) -> appended lines -> report; then the job that trains on
the file (`training_job`)."""

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubedistill.api.job import DistillationJob
from kubedistill.api.spec import DataFormat, DataSource, Mode
from kubedistill.runtime.generation.prompts import Prompt, read_prompts
from kubedistill.runtime.generation.store import GeneratedFile, Response, Settings, Skipped, verdict

log = logging.getLogger(__name__)

GENERATED_DIR = "generated"


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
        return (
            f"generation: {report['generated']} responses to {report['prompts']} prompts in {self.path} "
            f"({how}); skipped: {skipped or 'none'}"
            + (f" (listed in {self.path.with_suffix('.skipped.jsonl')})" if skipped else "")
            + _repeated(report.get("repeatedPrompts", []))
        )


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
    return Settings(
        teacher=teacher,
        endpoint=endpoint.base_url if endpoint else None,
        temperature=generation.temperature,
        top_p=generation.top_p,
        max_new_tokens=generation.max_new_tokens,
        seed=spec.training.seed if generation.seed is None else generation.seed,
    )


def generated_file(job: DistillationJob, output_dir: Path) -> GeneratedFile:
    generation = job.spec.generation
    assert generation is not None
    return GeneratedFile(
        output_dir / GENERATED_DIR,
        job.name,
        settings_of(job),
        generation.samples_per_prompt,
        generation.keep_truncated,
    )


def run_generation(
    job: DistillationJob,
    output_dir: Path,
    environ: Mapping[str, str],
    *,
    backoff_seconds: float = 0.5,
) -> GenerationResult:
    """Generate what the file lacks (own teacher: Ray must be connected), then finish the file."""
    generation = job.spec.generation
    assert generation is not None
    store = generated_file(job, output_dir)
    report = store.report()
    if report is not None:
        return GenerationResult(store.path, report, reused=True)
    read = read_prompts(job.spec.data.train, job.spec.data.on_bad_record)
    prompts = read.prompts
    done = store.existing(prompts)
    samples = generation.samples_per_prompt
    missing = {p.id: [s for s in range(samples) if (p.id, s) not in done] for p in prompts}
    todo = [p for p in prompts if missing[p.id]]
    log.info(
        "generation: %d of %d (prompt, sample) pairs to generate into %s",
        sum(map(len, missing.values())),
        len(prompts) * samples,
        store.path,
    )
    skipped: list[Skipped] = []

    def keep(prompt: Prompt, sample: int, response: Response | None, failure: str = "") -> None:
        reason = "failed" if response is None else verdict(response, generation.keep_truncated)
        if reason is None and response is not None:
            store.append(store.line(prompt, sample, response))
            return
        detail = failure or (f"finish_reason {response.finish_reason}" if response else "")
        skipped.append(Skipped(prompt.id, sample, prompt.source, reason or "failed", detail))

    if todo and generation.endpoint is not None:
        asyncio.run(_from_endpoint(job, store.settings, todo, missing, environ, keep, backoff_seconds))
    elif todo:
        _from_own_teacher(job, store.settings, todo, missing, samples, keep)
    report = store.finish(
        prompts,
        skipped,
        {
            "prompts": len(prompts),
            "reusedLines": len(done),
            "repeatedPrompts": read.repeated,
            "badRecords": [str(record) for record in read.bad],
        },
    )
    return GenerationResult(store.path, report, reused=False)


async def _from_endpoint(
    job: DistillationJob,
    settings: Settings,
    prompts: list[Prompt],
    missing: dict[str, list[int]],
    environ: Mapping[str, str],
    keep: Any,
    backoff_seconds: float,
) -> None:
    from kubedistill.runtime.generation.endpoint import ChatCompletionsClient, Request

    generation = job.spec.generation
    assert generation is not None and generation.endpoint is not None, (
        "called only for a job whose spec.generation names an endpoint"
    )
    endpoint = generation.endpoint
    api_key = environ.get(endpoint.api_key.env) if endpoint.api_key else None
    client = ChatCompletionsClient(endpoint, settings, api_key, backoff_seconds)
    by_id = {prompt.id: prompt for prompt in prompts}
    requests = [
        Request((prompt.id, sample), prompt.messages, settings.seed + sample, prompt.carried.get("tools"))
        for prompt in prompts
        for sample in missing[prompt.id]
    ]
    async for outcome in client.complete_all(requests):
        prompt_id, sample = outcome.key
        keep(by_id[prompt_id], sample, outcome.response, outcome.failure)


def _from_own_teacher(
    job: DistillationJob,
    settings: Settings,
    prompts: list[Prompt],
    missing: dict[str, list[int]],
    samples: int,
    keep: Any,
) -> None:
    from kubedistill.runtime.cluster.placement import ClusterView
    from kubedistill.runtime.generation.engine import TeacherGenerators

    generators = TeacherGenerators(job, ClusterView.current())
    try:
        for prompt, sample, response in generators.generate(prompts, missing, settings, samples):
            keep(prompt, sample, response)
    finally:
        # The teacher's GPUs go back before training starts (offPolicy starts its own teacher engines).
        generators.shutdown()


def training_job(job: DistillationJob, generated: Path) -> DistillationJob:
    """The job training runs: spec.data.train is the generated file; sft has no teacher any more."""
    spec = job.spec
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
    return job.model_copy(update={"spec": spec.model_copy(update=changes)})
