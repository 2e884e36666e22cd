"""The `kubedistill` command.

Every command imports what it needs inside its body: `validate`, `crd`, `render` and `operator` must work
in the operator image, which has neither torch nor ray.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kubedistill.api import telemetry

if TYPE_CHECKING:
    from kubedistill.api.job import DistillationJob
    from kubedistill.runtime.trainer import Trainer

app = typer.Typer(
    name="kubedistill",
    help="Knowledge distillation of LLMs as Kubernetes jobs, or on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def validate(
    paths: Annotated[
        list[Path],
        typer.Argument(
            exists=True, readable=True, help="Manifest files, or folders of them (*.yaml, *.yml)."
        ),
    ],
) -> None:
    """Check the DistillationJobs in manifests; print `FILE: field.path: problem` for each problem.

    Other kinds beside them are skipped with a note; the exit status is 1 only for an invalid job.
    """
    from kubedistill.runtime.validate import validate_manifests

    raise typer.Exit(validate_manifests(paths, typer.echo))


@app.command()
def crd(
    output: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the DistillationJob CustomResourceDefinition, generated from the spec."""
    from kubedistill.api.crd import render_crd_yaml

    text = render_crd_yaml()
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@app.command()
def run(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The job manifest.")
    ],
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many steps; the schedule still follows the spec.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Output directory (default: spec.output.path, else output/<name>).")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help=f"Port of /metrics (default: ${telemetry.METRICS_PORT_ENV} or "
            f"{telemetry.DEFAULT_METRICS_PORT}; only the default gives way to a free port when busy)."
        ),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Start from step 0, moving the old checkpoints aside to <spec.checkpoint.path>.old-<time>.",
        ),
    ] = False,
) -> None:
    """Run a DistillationJob on this machine's Ray (or the cluster in $RAY_ADDRESS).

    A re-run resumes from spec.checkpoint.path (or refuses, if the job changed); a finished job is left as is.
    """
    import logging
    import os
    from datetime import UTC, datetime

    from kubedistill.api.job import InvalidJob
    from kubedistill.api.manifest import load_job

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        job = load_job(file)
    except InvalidJob as invalid:
        for problem in invalid.problems:
            typer.echo(f"{file}: {problem}", err=True)
        raise typer.Exit(1) from None
    from kubedistill.runtime import preflight

    def fail(problems: list[str]) -> typer.Exit:
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
    if job.spec.generation is not None:
        job = _generate(file, job, out)
    # torch, ray and transformers only now: the checks above answer in a second or two.
    from kubedistill.runtime.checkpoint import CheckpointDirectory
    from kubedistill.runtime.data.errors import BadRecordError, ChatTemplateError, DataFileError
    from kubedistill.runtime.metrics import pod_namespace
    from kubedistill.runtime.ray_session import connect
    from kubedistill.runtime.resume import ResumeRefused
    from kubedistill.runtime.trainer import RunOptions, Trainer

    # The operator keeps only the series labelled with the job's namespace (its pod's, on a cluster).
    namespace = pod_namespace(job, os.environ) or RunOptions.namespace
    options = RunOptions(
        output_dir=out, stop_after_steps=max_steps, metrics_port=metrics_port, namespace=namespace
    )
    try:
        # The trainer reads and tokenises the data as it is built: before Ray starts, so that bad data
        # fails in seconds rather than after the cluster is up.
        trainer = Trainer(job, options)
    except (BadRecordError, DataFileError, ChatTemplateError) as error:
        raise fail([str(error)]) from None
    except ValueError as error:
        # Settings that cannot work for any record name their spec field; any other ValueError is a bug.
        if not str(error).startswith("spec."):
            raise
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
    except ResumeRefused as refused:
        raise fail([str(refused)]) from None
    if trainer.finished(resume_from):
        reached, end = resume_from.state.step, trainer.stop_step
        where = f"step {reached} of {end}" if reached == end else f"step {reached}, past this run's {end}"
        typer.echo(
            f"{file}: job {job.name} is finished: trained to {where} ({resume_from.path}), output in {out}. "
            "Nothing to do (--restart trains it again)."
        )
        return
    try:
        connect()
        trainer.run()
    except KeyboardInterrupt:
        raise _interrupted(file, trainer) from None


def _generate(file: Path, job: "DistillationJob", out: Path) -> "DistillationJob":
    """spec.generation: the teacher answers the training prompts into <out>/generated/ (resuming what an
    earlier run wrote); returns the job that trains on that file."""
    import os

    from kubedistill.runtime.data.errors import BadRecordError, DataFileError
    from kubedistill.runtime.generation import phase
    from kubedistill.runtime.generation.endpoint import EndpointRefused
    from kubedistill.runtime.generation.preflight import check_generation
    from kubedistill.runtime.generation.store import GenerationRefused

    def fail(problem: str) -> typer.Exit:
        typer.echo(f"{file}: {problem}", err=True)
        return typer.Exit(1)

    store = phase.generated_file(job, out)
    if store.report() is None:
        problems = check_generation(job, os.environ)
        if problems:
            raise fail(problems[0])
    try:
        if job.spec.generation.endpoint is None and store.report() is None:
            from kubedistill.runtime.ray_session import connect

            connect()
        result = phase.run_generation(job, out, os.environ)
    except (GenerationRefused, EndpointRefused, BadRecordError, DataFileError) as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        typer.echo(f"{file}: interrupted during generation; a re-run goes on from {store.path}", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"{file}: {result.summary()}")
    if not result.report["generated"]:
        raise fail(f"spec.generation: no response was kept (see {store.skipped_path}); nothing to train on")
    return phase.training_job(job, result.path)


def _interrupted(file: Path, trainer: "Trainer") -> typer.Exit:
    """Ctrl-C: where training stopped, and where a re-run goes on from."""
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
    typer.echo(f"{file}: interrupted {where}; {then}{written}", err=True)
    return typer.Exit(130)


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="Where assets and runs go.")] = Path("demo-output"),
    examples: Annotated[Path, typer.Option(help="The example manifests the demo runs.")] = Path(
        "examples/local"
    ),
    prepare_only: Annotated[
        bool, typer.Option(help="Only write the data and the initial tiny models.")
    ] = False,
) -> None:
    """Distill a tiny teacher into a tiny student on this machine and compare it with plain fine-tuning."""
    import logging

    from kubedistill.runtime import demo as demo_module

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if prepare_only:
        assets = demo_module.prepare(output)
        typer.echo(f"assets in {assets.root / 'assets'}")
        return
    demo_module.run(output, examples)


@app.command()
def render(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The job manifest.")
    ],
    image: Annotated[
        str | None,
        typer.Option(
            help="Runtime image where spec.cluster.image is unset "
            "(default: $KUBEDISTILL_RUNTIME_IMAGE, else ghcr.io/kubedistill/runtime:<version>)."
        ),
    ] = None,
) -> None:
    """Print the ConfigMap and RayJob the operator creates for a job, as multi-document YAML."""
    import os

    from kubedistill.api.job import InvalidJob
    from kubedistill.api.manifest import load_jobs
    from kubedistill.operator.render import render as render_job
    from kubedistill.operator.settings import RenderSettings, settings_from_env
    from kubedistill.operator.yaml_output import dump_all

    try:
        # Like the operator: loss and algorithm plugins live in the runtime image, which checks their names.
        jobs = load_jobs(file, check_plugin_names=False)
    except InvalidJob as invalid:
        for problem in invalid.problems:
            typer.echo(f"{file}: {problem}", err=True)
        raise typer.Exit(1) from None
    settings = RenderSettings(image) if image else settings_from_env(os.environ).render
    typer.echo(dump_all([obj for job in jobs for obj in render_job(job, settings)]), nl=False)


@app.command()
def operator(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch this namespace (repeatable).")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace.")
    ] = False,
    liveness_port: Annotated[
        int | None, typer.Option(help="Serve kopf's liveness probe at http://0.0.0.0:PORT/healthz.")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve the operator's Prometheus metrics on this port.")
    ] = None,
    peering: Annotated[
        str | None, typer.Option(help="KopfPeering name: one active operator among replicas.")
    ] = None,
    standalone: Annotated[bool, typer.Option(help="No peering with other operator replicas.")] = False,
) -> None:
    """Run the operator: DistillationJobs become KubeRay RayJobs; their state and progress, the status.

    Settings from the environment: KUBEDISTILL_RUNTIME_IMAGE, KUBEDISTILL_SCRAPE_PERIOD_SECONDS,
    KUBEDISTILL_SCRAPE_TIMEOUT_SECONDS, KUBEDISTILL_METRICS_URL_TEMPLATE; credentials from $KUBECONFIG,
    the pod's service account, or ~/.kube/config.
    """
    if bool(namespace) == all_namespaces:
        raise typer.BadParameter("give --namespace (one or more) or --all-namespaces")
    if peering and standalone:
        raise typer.BadParameter("--peering and --standalone exclude each other")
    import asyncio
    import logging
    import os

    from kubedistill.operator.runner import RunOptions, run_operator
    from kubedistill.operator.settings import settings_from_env

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = RunOptions(
        namespaces=tuple(namespace or ()),
        liveness_port=liveness_port,
        metrics_port=metrics_port,
        peering=peering,
        standalone=standalone,
    )
    asyncio.run(run_operator(options, settings_from_env(os.environ)))


def main() -> None:
    app()
