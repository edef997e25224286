"""Helpers shared by the commands: output (rich on a terminal, JSON otherwise) and the
``--device`` option."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from hmrcli import devices
from hmrcli.files import json_text

stdout = Console()
# soft_wrap: a message on stderr stays one line whatever the terminal's width (pipelines grep
# logs for "error: <file>"; rich would otherwise fold a long path at the console width)
stderr = Console(stderr=True, soft_wrap=True)


def want_json(flag: bool | None) -> bool:
    """Explicit ``--json/--no-json`` wins; otherwise JSON when stdout is not a terminal."""
    if flag is not None:
        return flag
    return not sys.stdout.isatty()


def print_json(obj: Any) -> None:
    sys.stdout.write(json_text(obj) + "\n")
    sys.stdout.flush()


def parse_batch_size(text: str, option: str = "--batch-size") -> int | str:
    """``--batch-size``: a positive integer, or ``auto`` (the engine chooses: from the free
    GPU memory on CUDA)."""
    t = str(text).strip().lower()
    if t == "auto":
        return "auto"
    try:
        n = int(t)
    except ValueError:
        n = 0
    if n < 1:
        raise typer.BadParameter(f"use a positive integer or auto; got {text!r}", param_hint=option)
    return n


def resolve_device(name: str) -> str:
    """``--device``: :func:`hmrcli.devices.resolve_device` (``auto`` -> ``cuda`` when available,
    else ``cpu``); a CUDA device asked for on a machine without one is a usage error (exit 2)."""
    try:
        return devices.resolve_device(name)
    except devices.DeviceUnavailable:
        raise typer.BadParameter("CUDA is not available on this machine (hmrcli doctor shows devices)",
                                 param_hint="--device") from None


def progress_bar(label: str, total: int, completed: int = 0, field: str | None = None, remaining: bool = False,
                 disable: bool = False):
    """The one progress bar of the batch commands (infer, export, train): rich, on stderr,
    ``label | bar | n/total | elapsed [| remaining] [| text field]``. Returns ``(progress, task)``;
    the caller starts/stops it (or uses it as a context manager) and updates ``task``
    (``field``: the name of a free text field, set with ``update(task, **{field: text})``)."""
    cols = [TextColumn(f"[bold]{label}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn()]
    if remaining:
        cols.append(TimeRemainingColumn())
    if field:
        cols.append(TextColumn("{task.fields[%s]}" % field))
    bar = Progress(*cols, console=stderr, disable=disable)
    task = bar.add_task(label, total=total, completed=completed, **({field: ""} if field else {}))
    return bar, task
