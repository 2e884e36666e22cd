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


def main() -> None:
    app()
