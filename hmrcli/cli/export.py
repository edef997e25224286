"""``hmrcli export``: saved results in; meshes, skinned GLB, JSON, NPZ and overlays out, no network."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from hmrcli.cli._output import print_json, progress_bar, stderr, want_json


def export(
    results: Annotated[Path, typer.Argument(help="Results folder written by `hmrcli infer` (or one image's folder in it).",
                                            show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: RESULTS itself).",
                                                show_default=False)] = None,
    formats: Annotated[str, typer.Option("--format", "-f", help="Comma-separated: obj, ply, glb, json, npz, overlay; "
                       "for the tracks of sequences: glb (animated), bvh, npz.")] = "glb",
    frames: Annotated[bool, typer.Option("--frames/--no-frames", help="Sequences: also export every frame's persons "
                      "one by one (by default a sequence's frames are exported as its tracks' animations only).")] = False,
    mesh_frame: Annotated[str, typer.Option("--mesh-frame", help="camera: vertices in the camera frame (default); "
                          "model: body-model output before the camera translation.")] = "camera",
    glb_camera: Annotated[bool, typer.Option("--glb-camera/--no-glb-camera", help="Put the camera into the GLB files.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist.")] = False,
    min_quality: Annotated[Optional[float], typer.Option("--min-quality", min=0.0, max=1.0, metavar="S", help="Export "
                           "only persons whose quality score (camera JSON 'quality.score') is >= S; persons below it, "
                           "or without a score (results of an older hmrcli), are left out and counted.")] = None,
    overlay_quality: Annotated[bool, typer.Option("--overlay-quality", help="overlay: colour each person by its "
                               "quality score (red 0, yellow 0.5, green 1).")] = False,
    smpl_dir: Annotated[Optional[str], typer.Option("--smpl-dir", envvar="HMRCLI_SMPL_DIR",
                                                    help="Folder with SMPL files (results made with SMPL).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    json_out: Annotated[Optional[bool], typer.Option("--json/--no-json", help="JSON lines on stdout (default when not a terminal).")] = None,
) -> None:
    """Re-export saved results without running any network: per person OUT/<image>/person_XX.obj|.ply
    (posed mesh), .glb (skinned, posed body with skeleton and camera), .json (hmrcli.person/1),
    .params.npz; per image OUT/<image>/overlay.png. Sequences (videos; README: Sequences): per
    track OUT/<sequence>/track_XX.glb (animated), .bvh, .npz. Existing files are kept unless --overwrite.

    --min-quality S leaves out persons whose quality score is below S (and those without one).

    Exit status: 0 all done, 1 some persons or overlays failed (see OUT/errors.jsonl), 2 all
    failed or bad usage."""
    from hmrcli.export.results import (  # start-up: loads torch (~3 s), kept out of `hmrcli --help`
        EXPORT_FORMATS,
        ExportOptions,
        ExportSummary,
        ResultsError,
        find_result_images,
        run_export,
    )
    from hmrcli.export.tracks import TRACK_FORMATS, export_tracks, find_sequence_results

    as_json = want_json(json_out)
    fmts = tuple(dict.fromkeys(f.strip().lower() for f in formats.split(",") if f.strip()))
    allowed = tuple(dict.fromkeys(EXPORT_FORMATS + TRACK_FORMATS))
    bad = [f for f in fmts if f not in allowed]
    if bad or not fmts:
        raise typer.BadParameter(f"unknown format(s) {bad or formats!r}: use {', '.join(allowed)}", param_hint="--format")
    if mesh_frame not in ("camera", "model"):
        raise typer.BadParameter("use camera or model", param_hint="--mesh-frame")
    out = results if out is None else out
    if not results.is_dir() or not find_result_images(results):
        what = "not a folder" if not results.is_dir() else "no results found (no result.json below it; run `hmrcli infer` first)"
        stderr.print(f"error: {results}: {what}", markup=False, highlight=False)
        raise typer.Exit(2)
    sequences = find_sequence_results(results)
    track_fmts = tuple(f for f in fmts if f in TRACK_FORMATS) if sequences else ()
    if "bvh" in fmts and not sequences:
        stderr.print(f"error: {results}: bvh is written for the tracks of sequences, and none were found (no "
                     "sequence.json below it; run `hmrcli infer VIDEO` or `--sequence` first)", markup=False, highlight=False)
        raise typer.Exit(2)
    in_sequence = {f.resolve() for sq in sequences for f in sq.frame_folders}
    skip = (lambda name: (results / name).resolve() in in_sequence) if (sequences and not frames) else None
    image_fmts = tuple(f for f in fmts if f in EXPORT_FORMATS)
    opts = ExportOptions(out=out, formats=image_fmts or ("npz",), mesh_frame=mesh_frame, overwrite=overwrite,
                         smpl_dir=smpl_dir, glb_camera=glb_camera, min_quality=min_quality,
                         overlay_quality=overlay_quality)
    images_left = [n for n, _ in find_result_images(results) if skip is None or not skip(n)] if image_fmts else []
    t0 = time.perf_counter()
    try:
        if as_json:
            def progress(ev):
                if not quiet:
                    print_json(ev)
            summary = run_export(results, opts, progress=progress, skip=skip) if images_left else ExportSummary()
            tracks = export_tracks(sequences, out, track_fmts, overwrite, glb_camera, smpl_dir, progress) \
                if track_fmts else None
        else:
            bar, task = progress_bar("export", len(images_left) + len(sequences if track_fmts else []), disable=quiet)
            with bar:
                def progress(ev):
                    if ev["event"] == "error":
                        fmt = f" {ev['format']}" if ev.get("format") else ""
                        bar.console.print(f"[red]error[/red]{fmt}: {escape(ev['message'])}", highlight=False)
                    elif ev["event"] == "done":
                        bar.update(task, advance=1)
                summary = run_export(results, opts, progress=progress, skip=skip) if images_left else ExportSummary()
                tracks = export_tracks(sequences, out, track_fmts, overwrite, glb_camera, smpl_dir, progress) \
                    if track_fmts else None
    except ResultsError as e:
        stderr.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    summary.seconds = time.perf_counter() - t0
    if tracks is not None:  # each track is one unit of work, like a person
        summary.done += tracks.done
        summary.skipped += tracks.skipped
        summary.failed += tracks.failed
        summary.written += tracks.written
        summary.errors += tracks.errors
    rec = summary.to_json()
    rec["out"] = str(out)
    if tracks is not None:
        rec["tracks"] = tracks.tracks
    if as_json:
        print_json(rec)
    elif not quiet:
        what = f"{tracks.tracks} tracks and " if tracks is not None else ""
        stderr.print(f"{what}{summary.persons} persons in {summary.images} images: {summary.done} done, {summary.skipped} skipped, "
                     f"{summary.failed} failed, {summary.written} files written in {summary.seconds:.1f} s -> {out}",
                     highlight=False)
        if min_quality is not None:
            stderr.print(f"--min-quality {min_quality:g}: {summary.below_quality} person(s) below it and "
                         f"{summary.quality_unknown} without a quality score left out", highlight=False)
    sys.stdout.flush()
    raise typer.Exit(summary.exit_code)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
