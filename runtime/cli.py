"""The `kubedistill` command.

Every command imports what it needs inside its body: `validate`, `crd`, `render` and `operator` must work
in the operator image, which has neither torch nor ray.
"""

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="kubedistill",
    help="Knowledge distillation of LLMs as Kubernetes jobs, or on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Files = Annotated[
    list[Path], typer.Argument(exists=True, dir_okay=False, readable=True, help="Manifest files.")
]


@app.command()
def validate(files: Files) -> None:
    """Check DistillationJob manifests; print `FILE: field.path: problem` for each problem."""
    from kubedistill.api.job import InvalidJob
    from kubedistill.api.manifest import load_jobs

    failed = False
    for path in files:
        try:
            jobs = load_jobs(path)
        except InvalidJob as invalid:
            failed = True
            for problem in invalid.problems:
                typer.echo(f"{path}: {problem}", err=True)
            continue
        names = ", ".join(job.name for job in jobs)
        typer.echo(f"{path}: valid ({names})")
    if failed:
        raise typer.Exit(1)


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
        int | None, typer.Option(help="Port of /metrics (default: $KUBEDISTILL_METRICS_PORT or 8080).")
    ] = None,
) -> None:
    """Run a DistillationJob on this machine's Ray (or the cluster in $RAY_ADDRESS)."""
    import logging

    from kubedistill.api.job import InvalidJob
    from kubedistill.api.manifest import load_job

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        job = load_job(file)
    except InvalidJob as invalid:
        for problem in invalid.problems:
            typer.echo(f"{file}: {problem}", err=True)
        raise typer.Exit(1) from None
    import os

    from kubedistill.runtime.data.errors import BadRecordError, ChatTemplateError, DataFileError
    from kubedistill.runtime.metrics import pod_namespace
    from kubedistill.runtime.ray_session import connect
    from kubedistill.runtime.trainer import RunOptions, Trainer

    out = output or Path(job.spec.output.path or f"output/{job.name}")
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
        typer.echo(f"{file}: {error}", err=True)
        raise typer.Exit(1) from None
    except ValueError as error:
        # Settings that cannot work for any record name their spec field; any other ValueError is a bug.
        if not str(error).startswith("spec."):
            raise
        typer.echo(f"{file}: {error}", err=True)
        raise typer.Exit(1) from None
    connect()
    trainer.run()


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
