"""The ``hmrcli`` command line: a thin Typer layer over the Python API.

Each sub-command lives in its own module and only parses options, calls the
API and prints.
"""

from __future__ import annotations

from typing import Annotated

import typer

from hmrcli._version import __version__

app = typer.Typer(
    name="hmrcli",
    help="Batch 3D human mesh recovery (Multi-RoI HMR): images in; body meshes, "
    "body-model parameters and cameras out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"hmrcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version_callback, is_eager=True,
                     help="Print the version and exit."),
    ] = False,
) -> None:
    """hmrcli: batch 3D human mesh recovery."""


from hmrcli.cli import benchmark as _benchmark  # noqa: E402
from hmrcli.cli import crop as _crop  # noqa: E402
from hmrcli.cli import detect as _detect  # noqa: E402
from hmrcli.cli import doctor as _doctor  # noqa: E402  (each module registers its commands)
from hmrcli.cli import export as _export  # noqa: E402
from hmrcli.cli import infer as _infer  # noqa: E402
from hmrcli.cli import train as _train  # noqa: E402
from hmrcli.cli import weights as _weights  # noqa: E402

_doctor.register(app)
_detect.register(app)
_crop.register(app)
_infer.register(app)
_weights.register(app)
_benchmark.register(app)
_export.register(app)
_train.register(app)


def main() -> None:
    app()


__all__ = ["app", "main"]
