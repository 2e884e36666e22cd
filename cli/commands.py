"""The subcommands: argument parsing and dispatch only; the work is in the packages they import lazily."""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from kubedistill.api import telemetry
from kubedistill.api.job import InvalidJob

T = TypeVar("T")

app = typer.Typer(
    name="kubedistill",
    help="Knowledge distillation of LLMs as Kubernetes jobs, or on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _load(file: Path, load: Callable[[Path], T]) -> T:
    """`load(file)`, or each problem of an invalid manifest as `FILE: field.path: problem` and exit 1."""
    try:
        return load(file)
    except InvalidJob as invalid:
        for problem in invalid.problems:
            typer.echo(f"{file}: {problem}", err=True)
        raise typer.Exit(1) from None


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
    from kubedistill.cli.validate import validate_manifests

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

    from kubedistill.api.manifest import load_job

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    job = _load(file, load_job)
    from kubedistill.runtime.trainer.run import run_job

    run_job(job, file, max_steps=max_steps, output=output, metrics_port=metrics_port, restart=restart)


@app.command(name="inspect")
def inspect_data(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The job manifest.")
    ],
    records: Annotated[int, typer.Option(min=0, help="How many of the first training samples to show.")] = 3,
    output: Annotated[
        Path | None,
        typer.Option(help="Where spec.generation wrote its records (default: spec.output.path, as run)."),
    ] = None,
) -> None:
    """Show what a job trains on: the first samples' text with the trained tokens between [[ and ]], what the
    teacher sees where it differs, and the counts of each data source.

    The data is read as `run` reads it (templates, truncation, onBadRecord), without starting Ray.
    """
    import logging

    from kubedistill.api.manifest import load_job

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    job = _load(file, load_job)
    from kubedistill.runtime.trainer.inspection import inspect_job

    inspect_job(job, file, records=records, output=output, echo=typer.echo)


@app.command(
    name="from-kdflow",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def from_kdflow(
    context: typer.Context,
    name: Annotated[
        str | None, typer.Option(help="metadata.name (default: from --wandb_run_name or --save_path).")
    ] = None,
) -> None:
    """Print the DistillationJob of a KDFlow command line: `kubedistill from-kdflow python -m
    kdflow.cli.train_kd_off_policy --kd_loss_fn jsd --jsd_beta 0.9 ...` (the launcher in front is optional).

    KDFlow's conventions are converted (jsd_beta, adaptive_alpha, DSKD's defaults); every argument converted
    in value, dropped or unsupported is listed on stderr.
    """
    import yaml

    from kubedistill.cli.kdflow import NotAKDFlowCommand, convert

    try:
        conversion = convert(context.args, name)
    except NotAKDFlowCommand as error:
        typer.echo(f"from-kdflow: {error}", err=True)
        raise typer.Exit(1) from None
    except InvalidJob as invalid:
        for problem in invalid.problems:
            typer.echo(f"from-kdflow: the converted manifest: {problem}", err=True)
        raise typer.Exit(1) from None
    for note in conversion.notes:
        typer.echo(note, err=True)
    typer.echo(yaml.safe_dump(conversion.manifest, sort_keys=False), nl=False)


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

    from kubedistill.runtime.demo import run as demo_module

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

    from kubedistill.api.manifest import load_jobs
    from kubedistill.operator.render import render as render_job
    from kubedistill.operator.settings import RenderSettings, settings_from_env
    from kubedistill.operator.yaml_output import dump_all

    # Like the operator: loss and algorithm plugins live in the runtime image, which checks their names.
    jobs = _load(file, lambda path: load_jobs(path, check_plugin_names=False))
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
    """The installed command: the subcommand, then Ray left (and stopped, if the command started it on
    this machine) and the process ended without tearing the interpreter down (`kubedistill.cli.exit`)."""
    import sys

    from kubedistill.cli.exit import exit_without_teardown

    try:
        app()
        code: object = 0
    except SystemExit as done:
        code = done.code
    if "ray" in sys.modules:
        # Only `run` and `demo` import Ray; the other commands leave the runtime unimported.
        from kubedistill.runtime.cluster.session import disconnect

        disconnect()
    exit_without_teardown(code)
