"""The ``hmrcli`` command line: a thin Typer layer over the Python API.

Each sub-command lives in its own module and only parses options, calls the
API and prints. The command modules import the heavy parts (torch, the engines, the
pipeline) inside the command functions, so that ``hmrcli --help`` starts in a fraction of a
second; the rest of the package imports at module top.
"""

from __future__ import annotations

import os

# The batch pipeline runs decoding/detection/BlazePose on a loader thread beside the network
# or the fit on the main thread. With OpenMP's default wait policy torch's idle worker threads
# spin and starve the other thread: on 2 cores `hmrcli infer sample_images` took 105 s instead
# of 3.3 s. PASSIVE makes idle OpenMP threads sleep. It only takes effect when set before torch
# (OpenMP) starts, so the command line sets it here, first; an explicit setting in the
# environment wins. Python API users who run the pipeline set it themselves (README, "Batch runs").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from typing import Annotated  # noqa: E402

import typer  # noqa: E402

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
