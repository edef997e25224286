"""``hmrcli infer``: images in; meshes, body-model parameters and cameras out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from hmrcli.cli._output import print_json, stderr, want_json
from hmrcli.cli.detect import (INPUTS_HELP, BoxesOpt, DetCheckpointOpt, DetConfigOpt, DetectorOpt, DetScoreOpt,
                               FrameStrideOpt, MaxPersonsOpt, ShardOpt, detector_and_sources)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("CUDA is not available on this machine (hmrcli doctor shows devices)")
    return name


def infer(
    images: Annotated[Optional[list[str]], typer.Argument(help=INPUTS_HELP, show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("meshes"),
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", "-c", envvar="HMRCLI_CHECKPOINT",
                          help="Regressor checkpoint: a file (native, Multi-RoI or CLIFF) or a name from `hmrcli weights list`.")] = None,
    engine: Annotated[str, typer.Option("--engine", "-e", help="regress (the Multi-RoI network; needs --checkpoint), "
                      "fit (fit the body model to BlazePose landmarks; offline, no weights) or auto (regress when a "
                      "checkpoint is given, else fit; announced on stderr).")] = "auto",
    refine: Annotated[str, typer.Option("--refine", help="none, fit (re-fit starting from the estimate) or pc-hmr "
                      "(calibrate the mesh with BlazePose's 3D landmarks, PC-HMR).")] = "none",
    rois: Annotated[int, typer.Option("--rois", min=1, max=5, help="Fitting/refinement: BlazePose runs on this many "
                    "RoIs of each person and the landmark sets are fused (1 = a single crop).")] = 5,
    overlay: Annotated[bool, typer.Option("--overlay/--no-overlay", help="Also write OUT/<image>/overlay.png: the "
                       "meshes rendered over the photo.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Persons per network call.")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, bf16 or fp16 (CUDA only).")] = "fp32",
    body_model: Annotated[str, typer.Option("--body-model", help="smpl (your files), free (shipped) or auto.")] = "auto",
    gender: Annotated[str, typer.Option(help="neutral, male or female (SMPL only).")] = "neutral",
    smpl_dir: Annotated[Optional[str], typer.Option("--smpl-dir", envvar="HMRCLI_SMPL_DIR", help="Folder with SMPL files.")] = None,
    mesh_format: Annotated[str, typer.Option("--mesh-format", help="Comma-separated: obj, ply.")] = "obj",
    mesh_frame: Annotated[str, typer.Option("--mesh-frame", help="camera: vertices in the camera frame (default); "
                          "model: body-model output before the camera translation.")] = "camera",
    focal: Annotated[Optional[float], typer.Option(help="Focal length in pixels (default sqrt(W^2 + H^2)).")] = None,
    aggregation: Annotated[Optional[str], typer.Option(help="code (RoI 0, default) or paper (mean fused feature).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images that already have results.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    json_out: Annotated[Optional[bool], typer.Option("--json/--no-json", help="JSON lines on stdout (default when not a terminal).")] = None,
    detector: DetectorOpt = "auto",
    boxes: BoxesOpt = None,
    det_score: DetScoreOpt = None,
    det_config: DetConfigOpt = None,
    det_checkpoint: DetCheckpointOpt = None,
    max_persons: MaxPersonsOpt = None,
    shard: ShardOpt = None,
    frame_stride: FrameStrideOpt = 1,
) -> None:
    """Reconstruct every person: mesh (.obj/.ply), camera JSON (hmrcli.camera/1) and
    parameters (.npz) per person under OUT/<image name>/ (+ overlay.png with --overlay).
    Without a regressor checkpoint the fitting engine runs (offline). Persons come from a detector
    (--detector, named on stderr; mediapipe finds only ONE person per image) or from
    --boxes FILE ('-' = stdin, e.g. `hmrcli detect IMAGES | hmrcli infer --boxes - ...`).

    Exit status: 0 all images done, 1 some failed (see OUT/errors.jsonl), 2 none succeeded
    or bad usage."""
    from hmrcli.api import load_regressor
    from hmrcli.body import load_body_model
    from hmrcli.engine.regress import RegressionEngine
    from hmrcli.detect import DetectorUnavailable
    from hmrcli.nn.checkpoints import CheckpointError
    from hmrcli.pipeline import InferOptions, run_inference

    as_json = want_json(json_out)
    fmts = tuple(f.strip().lower() for f in mesh_format.split(",") if f.strip())
    bad = [f for f in fmts if f not in ("obj", "ply")]
    if bad or not fmts:
        raise typer.BadParameter(f"unknown mesh format(s) {bad or mesh_format!r}: use obj and/or ply", param_hint="--mesh-format")
    if mesh_frame not in ("camera", "model"):
        raise typer.BadParameter("use camera or model", param_hint="--mesh-frame")
    if engine not in ("auto", "regress", "fit"):
        raise typer.BadParameter("use auto, regress or fit", param_hint="--engine")
    if refine not in ("none", "fit", "pc-hmr"):
        raise typer.BadParameter("use none, fit or pc-hmr", param_hint="--refine")
    if engine == "auto":
        engine = "regress" if checkpoint else "fit"
        if not quiet:
            why = (f"regressor checkpoint {checkpoint}" if checkpoint else
                   "no regressor checkpoint configured (--checkpoint / HMRCLI_CHECKPOINT): fitting the body model "
                   "to BlazePose landmarks, offline")
            stderr.print(f"engine: {engine} ({why})", markup=False, highlight=False)
    if engine == "regress" and checkpoint is None:
        stderr.print("error: --engine regress needs a regressor checkpoint. Pass --checkpoint FILE or a name from "
                     "`hmrcli weights list` (hmrcli doctor shows which are found), or use --engine fit.",
                     markup=False, highlight=False)
        raise typer.Exit(2)
    if engine == "fit" and refine == "fit":
        refine = "none"  # the fit engine already fits
    try:
        dev = _device(device)
        body = load_body_model(body_model, gender=gender, smpl_dir=smpl_dir)
        if engine == "regress":
            net = load_regressor(checkpoint, device=dev, aggregation=aggregation)
            eng = RegressionEngine(net, body, device=dev, precision=precision, batch_size=batch_size)
        else:
            from hmrcli.fit.engine import FitEngine

            eng = FitEngine(body, device=dev, num_rois=rois, batch_size=batch_size)
        if refine != "none":
            from hmrcli.fit.engine import RefinedEngine

            eng = RefinedEngine(eng, refine, num_rois=rois)
    except DetectorUnavailable as e:
        stderr.print(f"error: the fitting engine needs MediaPipe's BlazePose (the [fit] extra; `make install-fit`): {e}",
                     markup=False, highlight=False)
        raise typer.Exit(2) from None
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        stderr.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    if not eng.betas_applied and not quiet:
        stderr.print(f"note: the checkpoint regresses {eng.betas_space} betas, which mean nothing to the "
                     f"{body.info.name} body model: meshes use its mean shape (the betas are still saved).",
                     markup=False, highlight=False)
    det, sources = detector_and_sources(images, detector, boxes, det_score, det_config, det_checkpoint, device,
                                        quiet=quiet, shard=shard, frame_stride=frame_stride)
    opts = InferOptions(out=out, mesh_formats=fmts, mesh_frame=mesh_frame, focal=focal, overwrite=overwrite,
                        checkpoint=str(checkpoint or ""), max_persons=max_persons, overlay=overlay)

    if as_json:
        def progress(ev):
            if not quiet:
                print_json(ev)
        summary = run_inference(sources, eng, opts, progress=progress, detector=det)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]infer"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                      TimeElapsedColumn(), console=stderr, disable=quiet) as bar:
            task = bar.add_task("infer", total=len(sources), rate="")
            state = {"persons": 0}

            def progress(ev):
                if ev["event"] == "done":
                    state["persons"] += ev["persons"]
                    if ev["persons"] == 0:
                        bar.console.print(f"note: no person found in {ev['file']}", markup=False, highlight=False)
                elif ev["event"] == "error":
                    bar.console.print(f"[red]error[/red] {escape(ev['file'])} ({ev['stage']}): {escape(ev['message'])}", highlight=False)
                el = max(bar.tasks[0].elapsed or 1e-9, 1e-9)
                done = bar.tasks[0].completed + 1
                bar.update(task, advance=1, rate=f"{done / el:.2f} img/s {state['persons'] / el:.2f} persons/s")
            summary = run_inference(sources, eng, opts, progress=progress, detector=det)
    if hasattr(det, "close"):
        det.close()
    if hasattr(eng, "close"):
        eng.close()
    rec = summary.to_json()
    rec["out"] = str(out)
    if as_json:
        print_json(rec)
    elif not quiet:
        stderr.print(f"{summary.done} done, {summary.skipped} skipped, {summary.failed} failed, "
                     f"{summary.persons} persons in {summary.seconds:.1f} s -> {out}", highlight=False)
    sys.stdout.flush()
    raise typer.Exit(summary.exit_code)


def register(app: typer.Typer) -> None:
    app.command("infer")(infer)
