"""``hmrcli weights``: list known checkpoints, convert files to the native format, export to ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from hmrcli.assets import checkpoints_dir, sha256_file
from hmrcli.cli._output import print_json, stderr, stdout, want_json

weights_app = typer.Typer(help="Regressor checkpoints: list, fetch, verify, convert to hmrcli's format, export to ONNX.",
                          no_args_is_help=True)


@weights_app.command("convert")
def convert(
    src: Annotated[Path, typer.Argument(help="Authors' Multi-RoI, CLIFF or native checkpoint.")],
    dst: Annotated[Path, typer.Argument(help="Output path; writes DST.safetensors and DST.json.")],
    aggregation: Annotated[Optional[str], typer.Option(help="Store this aggregation (code|paper) in the config.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output.")] = False,
) -> None:
    """Convert a checkpoint to safetensors weights + a JSON config (architecture, backbone, M,
    crop size, box convention, body model, provenance)."""
    # start-up: loads torch (~3 s), kept out of `hmrcli --help`
    from hmrcli.nn.checkpoints import CheckpointError, load_checkpoint, save_native

    out = dst.with_suffix(".safetensors") if dst.suffix != ".safetensors" else dst
    if out.exists() and not overwrite:
        stderr.print(f"[red]{out} exists[/red] (use --overwrite)")
        raise typer.Exit(1)
    try:
        model, cfg = load_checkpoint(src, aggregation=aggregation)
    except CheckpointError as e:
        stderr.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    cfg.provenance.setdefault("source_file", src.name)
    cfg.provenance["source_sha256"] = sha256_file(src)
    path = save_native(model, cfg, out)
    rec = {"written": str(path), "config": str(path.with_suffix(".json")), "layout": cfg.provenance.get("layout", "native"),
           "arch": cfg.arch, "backbone": cfg.backbone, "num_rois": cfg.num_rois}
    if want_json(None):
        print_json(rec)
    else:
        stdout.print(f"wrote {path} and {path.with_suffix('.json')} ({cfg.arch}, {cfg.backbone}, M={cfg.num_rois})")


@weights_app.command("export-onnx")
def export_onnx_cmd(
    checkpoint: Annotated[str, typer.Argument(help="A regressor checkpoint file (native, Multi-RoI or CLIFF) or a "
                                                   "name from `hmrcli weights list`.")],
    dst: Annotated[Path, typer.Argument(help="Output ONNX file (OUT.onnx).")],
    aggregation: Annotated[Optional[str], typer.Option(help="Bake this aggregation (code|paper) into the graph "
                                                            "(default: the checkpoint's).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset to write.", min=18)] = 18,
    tolerance: Annotated[float, typer.Option(help="Largest |onnxruntime - torch| accepted per output in the parity "
                                                  "check, times max(1, largest |output|); above it nothing is "
                                                  "written.", min=0.0)] = 1e-3,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    json_out: Annotated[Optional[bool], typer.Option("--json/--no-json")] = None,
) -> None:
    """Export a regressor to ONNX for `hmrcli infer --runtime onnx` (and other ONNX runtimes).

    Inputs crops (B, M, 3, H, W) float32 (ImageNet-normalised RGB) and bbox_info (B, M, 3);
    outputs person_rotmats (B, 24, 3, 3), person_betas (B, 10), cams (B, M, 3). The batch B is
    dynamic; M, the crop size and the aggregation are fixed by the checkpoint. The checkpoint's
    config (crop size, aspect, box_rescale, M, aggregation, body model, provenance) is stored in
    the file's metadata, so the .onnx file alone is enough to run it. Before writing (atomically),
    the graph runs under onnxruntime on the CPU against torch at batch sizes 1 and 3; the max abs
    difference per output is printed. Needs the [onnx] extra (onnx, onnxscript).
    Exit status: 0 written, 1 export or parity check failed, 2 unusable checkpoint or missing extra."""
    # start-up: loads torch (~3 s), kept out of `hmrcli --help`
    from hmrcli.nn.checkpoints import CheckpointError
    from hmrcli.weights.catalogue import load_regressor, resolve_checkpoint
    from hmrcli.weights.onnx_regressor import (
        EXPORT_INSTALL_HINT,
        OnnxExportError,
        export_onnx,
        is_onnx_file,
    )

    if dst.exists() and not overwrite:
        stderr.print(f"error: {dst} exists (use --overwrite)", markup=False, highlight=False)
        raise typer.Exit(1)
    if not is_onnx_file(dst):
        stderr.print(f"error: {dst}: the output must end in .onnx", markup=False, highlight=False)
        raise typer.Exit(2)
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        stderr.print(f"error: exporting to ONNX needs onnx and onnxscript ({e}): {EXPORT_INSTALL_HINT}",
                     markup=False, highlight=False)
        raise typer.Exit(2) from None
    try:
        src = resolve_checkpoint(checkpoint)
        if is_onnx_file(src):
            raise CheckpointError(f"{src} is already an ONNX file; give the torch checkpoint it came from")
        model = load_regressor(src, device="cpu", aggregation=aggregation)
    except (CheckpointError, ValueError) as e:
        stderr.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    cfg = model.config
    cfg.provenance.setdefault("source_file", src.name)
    cfg.provenance["source_sha256"] = sha256_file(src)
    try:
        rep = export_onnx(model, cfg, dst, opset=opset, tolerance=tolerance)
    except OnnxExportError as e:
        stderr.print(f"error: ONNX export of {src} failed: {e}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    rep["source"] = str(src)
    if want_json(json_out):
        print_json(rep)
    else:
        stdout.print(f"wrote {dst} ({cfg.arch}, {cfg.backbone}, M={cfg.num_rois}, crop {cfg.crop_hw[0]}x{cfg.crop_hw[1]}, "
                     f"{cfg.aggregation}, opset {rep['opset']}, {rep['bytes'] / 1e6:.1f} MB)", markup=False, highlight=False)
        stdout.print(f"parity vs torch under onnxruntime (CPU), batches {', '.join(map(str, rep['parity_batches']))}: "
                     "max abs diff " + ", ".join(f"{k} {v:.2e}" for k, v in rep["max_abs_diff"].items()),
                     markup=False, highlight=False)


@weights_app.command("list")
def list_known(
    json_out: Annotated[Optional[bool], typer.Option("--json/--no-json", help="JSON lines output.")] = None,
) -> None:
    """Known checkpoints (models/registry.json) and whether each is in the checkpoints folder."""
    # start-up: loads torch (~3 s), kept out of `hmrcli --help`
    from hmrcli.weights.catalogue import known_checkpoints

    folder = checkpoints_dir()
    rows = []
    for name, e in sorted(known_checkpoints().items()):
        present = (folder / e["filename"]).is_file()
        rows.append({"name": name, "filename": e["filename"], "present": present,
                     "path": str(folder / e["filename"]), "arch": e["arch"], "backbone": e["backbone"],
                     "published": e.get("published"), "source": e["source"]})
    if want_json(json_out):
        for r in rows:
            print_json(r)
        return
    t = Table(title=f"Known checkpoints (folder: {folder})")
    for c in ("name", "file", "present", "published figures"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["name"], r["filename"], "yes" if r["present"] else "no", _published(r["published"]))
    stdout.print(t)
    stdout.print("Get missing files from their source pages (`hmrcli weights list --json` shows them).")


def _published(p: dict | None) -> str:
    """Regressors: 3DPW MPJPE / PA-MPJPE / PVE in mm; detectors: their dataset's box AP."""
    if not p:
        return "-"
    if "box AP" in p:
        return f"{p.get('dataset', '').upper()} {p.get('split', '')} box AP {p['box AP']}".strip()
    return f"3DPW MPJPE {p.get('MPJPE')} / PA {p.get('PA-MPJPE')} / PVE {p.get('PVE')} mm"


@weights_app.command("fetch")
def fetch(
    name: Annotated[str, typer.Argument(help="A name from `hmrcli weights list`, or blazepose-heavy (the BlazePose "
                                             "GHUM Heavy landmark model for --landmarks heavy).")],
    dest: Annotated[Optional[Path], typer.Option(help="Folder (default: the checkpoints folder).")] = None,
    timeout: Annotated[float, typer.Option(help="Network timeout in seconds.")] = 15.0,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    from_file: Annotated[Optional[Path], typer.Option("--from", help="blazepose-heavy: install from this .tflite file "
                         "or npm tarball (`npm pack @mediapipe/pose@0.5.1675469404`) instead of downloading.")] = None,
) -> None:
    """Download a known checkpoint (checked against its sha256 when known). Without network,
    or for files with no direct URL, fails at once and says where to put the file by hand."""
    # start-up: loads torch (~3 s), kept out of `hmrcli --help`
    from hmrcli.weights.catalogue import FetchError, fetch_checkpoint

    if name.startswith("blazepose-"):
        # start-up: loads numpy (~0.2 s), kept out of `hmrcli --help`
        from hmrcli.detect.base import DetectorUnavailable
        from hmrcli.detect.blazepose_models import (
            LANDMARK_FILES,
            install_landmark_model,
        )

        model = name.removeprefix("blazepose-")
        if model not in LANDMARK_FILES:
            stderr.print(f"error: unknown BlazePose model {name!r}: use blazepose-heavy", markup=False, highlight=False)
            raise typer.Exit(2)
        try:
            path = install_landmark_model(model, source=from_file, download=from_file is None, timeout=timeout)
        except DetectorUnavailable as e:
            _fail(e)
        _fetched(name, path, " (sha256 ok)")
        return
    try:
        path = fetch_checkpoint(name, dest, timeout=timeout, overwrite=overwrite)
    except FetchError as e:
        _fail(e)
    _fetched(name, path)


def _fail(e: Exception) -> None:
    stderr.print(f"error: {e}", markup=False, highlight=False)
    raise typer.Exit(1) from None


def _fetched(name: str, path: Path, note: str = "") -> None:
    if want_json(None):
        print_json({"name": name, "path": str(path)})
    else:
        stdout.print(f"{name}: {path}{note}")


@weights_app.command("verify")
def verify(
    file: Annotated[str, typer.Argument(help="A checkpoint file or a known name.")],
    json_out: Annotated[Optional[bool], typer.Option("--json/--no-json")] = None,
) -> None:
    """Check a checkpoint (or an .onnx file from `export-onnx`): sha256 against the registry (when known) and that it loads.
    Exit status 0 when both hold, 1 otherwise."""
    # start-up: loads torch (~3 s), kept out of `hmrcli --help`
    from hmrcli.nn.checkpoints import CheckpointError
    from hmrcli.weights.catalogue import verify_checkpoint

    try:
        rep = verify_checkpoint(file)
    except CheckpointError as e:
        stderr.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    if want_json(json_out):
        print_json(rep)
    else:
        stdout.print(f"{rep['path']}\n  sha256 {rep['sha256']}"
                     + (f" ({'matches' if rep['sha256_ok'] else 'DOES NOT match'} the registry)" if rep.get("sha256_ok") is not None else "")
                     + (f"\n  loads{' (ONNX, onnxruntime)' if rep.get('runtime') == 'onnx' else ''}: {rep['layout']} {rep['arch']} "
                        f"{rep['backbone']} M={rep['num_rois']}" if rep["loads"]
                        else f"\n  does not load: {rep['error']}"), markup=False, highlight=False)
    raise typer.Exit(0 if rep["ok"] else 1)


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")
