"""`kubedistill run`'s work on this machine: the checks before Ray, resume or restart, train, Ctrl-C and
SIGTERM.

The command line itself (parsing, loading the manifest) is `kubedistill.cli`, above the packages.
"""

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kubedistill.api.job import DistillationJob, SpecError
from kubedistill.api.spec import Mode
from kubedistill.runtime.trainer import preflight
from kubedistill.runtime.trainer.stopping import TERMINATED_EXIT_CODE, Stopping, Terminated

RUN_LOG = "run.log"
"""In the output directory: what the run and its Ray workers logged, appended run after run."""

if TYPE_CHECKING:
    from kubedistill.api.job import DistillationJob
    from kubedistill.runtime.trainer.controller import Trainer
    from kubedistill.runtime.trainer.metrics import TrainerMetrics


def run_job(
    job: DistillationJob,
    file: Path,
    *,
    max_steps: int | None,
    output: Path | None,
    metrics_port: int | None,
    restart: bool,
) -> None:
    """Train `job` (read from `file`, which problems are reported against); `typer.Exit(1)` with one line
    per problem for a mistake the user can fix, `typer.Exit(130)` after Ctrl-C and `typer.Exit(143)` after
    SIGTERM, each with a line saying where it stopped."""
    try:
        with Stopping().handling_sigterm() as stopping:
            _run_job(
                job,
                file,
                stopping,
                max_steps=max_steps,
                output=output,
                metrics_port=metrics_port,
                restart=restart,
            )
    except Terminated:
        typer.echo(f"{file}: stopped by SIGTERM before training started", err=True)
        raise typer.Exit(TERMINATED_EXIT_CODE) from None


def _run_job(
    job: DistillationJob,
    file: Path,
    stopping: Stopping,
    *,
    max_steps: int | None,
    output: Path | None,
    metrics_port: int | None,
    restart: bool,
) -> None:
    from kubedistill.runtime.trainer.metrics import (
        LOCAL_NAMESPACE,
        TrainerMetrics,
        pod_namespace,
        serve_metrics,
    )

    metrics: TrainerMetrics | None = None
    """Served from the generation phase on, else from the data's preparation on."""

    def fail(problems: list[str]) -> typer.Exit:
        if metrics is not None:
            metrics.close()
        for problem in problems:
            typer.echo(f"{file}: {problem}", err=True)
        return typer.Exit(1)

    out = output or Path(job.spec.output.path or f"output/{job.name}")
    checkpoints = job.spec.checkpoint.path
    problems = preflight.check_surroundings(
        job, out, "--output" if output else "spec.output.path", metrics_port, os.environ
    )
    if problems:
        raise fail(problems)
    # The operator keeps only the series labelled with the job's namespace (its pod's, on a cluster).
    namespace = pod_namespace(job, os.environ) or LOCAL_NAMESPACE
    generation: dict[str, object] | None = None
    if job.spec.generation is not None:
        # /metrics from the start of the generation, which may take hours: the operator reads its progress.
        metrics = TrainerMetrics(namespace, job.name)
        job, generation = _generate(file, job, out, metrics, metrics_port)
    if metrics is None:
        # /metrics before the records are tokenised, which may take an hour: the operator reads its progress.
        metrics = TrainerMetrics(namespace, job.name)
        serve_metrics(metrics, metrics_port, preflight.metrics_port_asked(metrics_port))
    # torch, ray and transformers only now: the checks above answer in a second or two.
    from kubedistill.runtime.cluster.console import WHAT_THE_LOG_HOLDS, keep_log
    from kubedistill.runtime.cluster.session import connect
    from kubedistill.runtime.data.errors import BadRecordError, ChatTemplateError, DataFileError
    from kubedistill.runtime.trainer.checkpoints import CheckpointDirectory
    from kubedistill.runtime.trainer.controller import RunOptions, Trainer
    from kubedistill.runtime.trainer.resume import ResumeRefused

    options = RunOptions(
        output_dir=out,
        stop_after_steps=max_steps,
        metrics_port=metrics_port,
        namespace=namespace,
        metrics=metrics,
        generation=generation,
        stopping=stopping,
    )
    if os.environ.get("RAY_ADDRESS"):
        # Inside a RayJob the cluster is up already: attached now, its nodes can tokenise the data.
        connect()
    try:
        # The trainer reads and tokenises the data as it is built: before Ray starts, so that bad data
        # fails in seconds rather than after the cluster is up.
        trainer = Trainer(job, options)
    except (BadRecordError, DataFileError, ChatTemplateError, SpecError) as error:
        # Settings that cannot work for any record name their spec field; any other error is a bug.
        raise fail([str(error)]) from None
    if restart and checkpoints:
        try:
            aside = CheckpointDirectory(Path(checkpoints), job.spec.checkpoint.keep).move_aside(
                datetime.now(UTC)
            )
        except OSError as error:
            problem = f"spec.checkpoint.path: --restart cannot move '{checkpoints}' aside: {error.strerror}"
            raise fail([problem]) from None
        if aside is not None:
            typer.echo(f"{file}: --restart: moved the old checkpoints aside to {aside}", err=True)
    try:
        resume_from = trainer.resume_point()
        if resume_from is None:
            trainer.start_from()  # refused here, before Ray starts, rather than once the ranks load it
    except ResumeRefused as refused:
        raise fail([str(refused)]) from None
    if trainer.finished(resume_from):
        assert resume_from is not None
        reached, end = resume_from.state.step, trainer.stop_step
        where = f"step {reached} of {end}" if reached == end else f"step {reached}, past this run's {end}"
        typer.echo(
            f"{file}: job {job.name} is finished: trained to {where} ({resume_from.path}), output in {out}. "
            "Nothing to do (--restart trains it again)."
        )
        trainer.metrics.close()  # served since the generation phase, if the job has one
        return
    log_file = out / RUN_LOG
    typer.echo(f"log: {log_file} ({WHAT_THE_LOG_HOLDS})", err=True)
    try:
        connect()
        keep_log(log_file)
        trainer.run()
    except KeyboardInterrupt:
        raise _interrupted(file, trainer, "interrupted", 130) from None
    except Terminated:
        raise _interrupted(file, trainer, "stopped by SIGTERM", TERMINATED_EXIT_CODE) from None
    finally:
        typer.echo(f"log: {log_file}", err=True)


def _generate(
    file: Path, job: "DistillationJob", out: Path, metrics: "TrainerMetrics", metrics_port: int | None
) -> "tuple[DistillationJob, dict[str, object]]":
    """spec.generation: the teacher answers the training prompts into <out>/generated/ (resuming what an
    earlier run wrote), its progress on /metrics; returns the job that trains on that file and what
    summary.json says of the generation."""
    from kubedistill.runtime.data.errors import BadRecordError, DataFileError
    from kubedistill.runtime.generation import phase, synthesis
    from kubedistill.runtime.generation.endpoint import EndpointRefused
    from kubedistill.runtime.generation.preflight import check_generation, check_templates
    from kubedistill.runtime.generation.store import GenerationRefused, Usage
    from kubedistill.runtime.generation.synthesis import StepFailed
    from kubedistill.runtime.trainer.metrics import announce, publish_generation, serve_metrics

    def fail(problem: str) -> typer.Exit:
        metrics.close()
        typer.echo(f"{file}: {problem}", err=True)
        return typer.Exit(1)

    generation = job.spec.generation
    assert generation is not None
    problems = check_templates(job)
    if problems:
        raise fail(problems[0])
    store = phase.generated_file(job, out)
    finished = synthesis.phase_finished(job, out)
    if not finished:
        problems = check_generation(job, os.environ)
        if problems:
            raise fail(problems[0])
    serve_metrics(metrics, metrics_port, preflight.metrics_port_asked(metrics_port))
    announce(metrics)
    try:
        if generation.endpoint is None and not finished:
            from kubedistill.runtime.cluster.session import connect

            connect()
        phased = synthesis.run_phase(
            job,
            out,
            os.environ,
            echo=lambda line: typer.echo(f"{file}: {line}"),
            on_progress=lambda progress: publish_generation(metrics, progress),
        )
        result = phased.answers
    except (GenerationRefused, EndpointRefused, BadRecordError, DataFileError, StepFailed) as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        metrics.close()
        typer.echo(f"{file}: interrupted during generation; a re-run goes on from {store.path}", err=True)
        raise typer.Exit(130) from None
    except Terminated:
        metrics.close()
        typer.echo(
            f"{file}: stopped by SIGTERM during generation; a re-run goes on from {store.path}", err=True
        )
        raise typer.Exit(TERMINATED_EXIT_CODE) from None
    problem = result.problem(generation.min_kept_fraction)
    if problem is not None:
        raise fail(problem)
    report = result.report
    usage = Usage.from_json(report.get("usage"))
    summary: dict[str, object] = {
        "file": str(result.path),
        "pairs": report["pairs"],
        "kept": report["generated"],
        "skipped": report["skipped"],
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        **({"steps": [step.counts() for step in phased.steps]} if phased.steps else {}),
    }
    train_on = phased.path
    if job.spec.mode == Mode.PREFERENCE:
        train_on, summary["preference"] = _preference_pairs(file, job, out, phased.path, fail)
    return phase.training_job(job, train_on), summary


def _preference_pairs(
    file: Path, job: "DistillationJob", out: Path, chosen: Path, fail: "Callable[[str], typer.Exit]"
) -> tuple[Path, dict[str, object]]:
    """Mode preference: the student's own answers to the prompts the teacher answered (rollout engines, from
    its initial weights), paired with the teacher's; the pairs file and what summary.json says of it."""
    from kubedistill.runtime.generation import pairs

    try:
        if not pairs.student_answers_done(job, out):
            from kubedistill.runtime.cluster.session import connect

            connect()
        made, student = pairs.make_pairs(job, out, chosen)
    except ValueError as error:
        raise fail(str(error)) from None
    typer.echo(f"{file}: student {student.summary()}")
    typer.echo(f"{file}: {made.summary()}")
    return made.path, {"file": str(made.path), "pairs": made.pairs, "unpaired": dict(made.unpaired)}


def _interrupted(file: Path, trainer: "Trainer", how: str, code: int) -> typer.Exit:
    """Ctrl-C or SIGTERM: where training stopped, and where a re-run goes on from."""
    reached = trainer.steps_done
    where = "before training started" if reached is None else f"at step {reached} of {trainer.total_steps}"
    latest = trainer.checkpoints.latest() if trainer.checkpoints else None
    if latest is not None:
        then = f"a re-run resumes from {latest.path} (step {latest.state.step})"
    elif trainer.checkpoints is not None:
        then = "no checkpoint was written yet: a re-run starts from step 0"
    else:
        then = "spec.checkpoint.path is unset: a re-run starts from step 0"
    written = f"; what was done is in {trainer.options.output_dir}" if reached else ""
    typer.echo(f"{file}: {how} {where}; {then}{written}", err=True)
    return typer.Exit(code)
