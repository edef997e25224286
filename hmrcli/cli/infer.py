"""``hmrcli infer``: images in; meshes, body-model parameters and cameras out."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from hmrcli.cli._output import (
    parse_batch_size,
    print_json,
    progress_bar,
    resolve_device,
    stderr,
    want_json,
)
from hmrcli.cli.detect import (
    INPUTS_HELP,
    BoxesOpt,
    DetCheckpointOpt,
    DetConfigOpt,
    DetectorOpt,
    DetScoreOpt,
    FrameStrideOpt,
    MaxPersonsOpt,
    ShardOpt,
    detector_and_sources,
)
from hmrcli.files import json_text


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
    landmarks: Annotated[str, typer.Option("--landmarks", help="Fitting/refinement: BlazePose landmark model, full "
                         "(ships with mediapipe) or heavy (BlazePose GHUM Heavy, 27.7 MB: `make install-heavy` or "
                         "`hmrcli weights fetch blazepose-heavy`).")] = "full",
    mirror: Annotated[bool, typer.Option("--mirror/--no-mirror", help="Fitting/refinement: BlazePose also on each "
                      "RoI's crop flipped left-right, both views fused (lower error, more persons found; BlazePose "
                      "takes twice as long).")] = True,
    pose_prior: Annotated[str, typer.Option("--pose-prior", help="Fitting/refinement: pose prior, relaxed (pull "
                          "towards a relaxed standing pose) or gmm (a Gaussian mixture learned from CMU motion "
                          "capture, models/pose_prior).")] = "relaxed",
    overlay: Annotated[bool, typer.Option("--overlay/--no-overlay", help="Also write OUT/<image>/overlay.png: the "
                       "meshes rendered over the photo.")] = False,
    overlay_quality: Annotated[bool, typer.Option("--overlay-quality", help="With --overlay: colour each person by "
                               "its quality score (red 0, yellow 0.5, green 1).")] = False,
    min_quality: Annotated[Optional[float], typer.Option("--min-quality", min=0.0, max=1.0, metavar="S", help="Persons "
                           "whose quality score (camera JSON 'quality', docs/method.md) is below S get no files: "
                           "result.json lists them under 'problems' with their flags.")] = None,
    batch_size: Annotated[str, typer.Option("--batch-size", "-b", metavar="N|auto", help="Persons per network call: a number, or auto "
                          "(CUDA: from the free GPU memory and the memory one person takes, measured at start; CPU: "
                          "16).")] = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA, fp32 on the CPU), fp32, bf16 or fp16 "
                         "(CUDA only).")] = "auto",
    compile_net: Annotated[bool, typer.Option("--compile/--no-compile", help="Regression engine: torch.compile the "
                           "network (slow first batch, faster after; batches padded to --batch-size).")] = False,
    runtime: Annotated[str, typer.Option("--runtime", help="What runs the regressor (--engine regress): torch, or "
                       "onnx (onnxruntime; --checkpoint must be an .onnx file from `hmrcli weights export-onnx`; "
                       "CUDA/TensorRT providers on cuda when onnxruntime has them; fp32).")] = "torch",
    body_model: Annotated[str, typer.Option("--body-model", help="smpl (your files), free (shipped) or auto.")] = "auto",
    gender: Annotated[str, typer.Option(help="neutral, male or female (SMPL only).")] = "neutral",
    smpl_dir: Annotated[Optional[str], typer.Option("--smpl-dir", envvar="HMRCLI_SMPL_DIR", help="Folder with SMPL files.")] = None,
    mesh_format: Annotated[str, typer.Option("--mesh-format", help="Comma-separated: obj, ply.")] = "obj",
    mesh_frame: Annotated[str, typer.Option("--mesh-frame", help="camera: vertices in the camera frame (default); "
                          "model: body-model output before the camera translation.")] = "camera",
    focal: Annotated[Optional[float], typer.Option(help="Focal length in pixels for every image (default: the photo's "
                     "EXIF focal length when it has one, else sqrt(W^2 + H^2)).")] = None,
    exif_focal: Annotated[bool, typer.Option("--exif-focal/--no-exif-focal", help="Use the photo's EXIF focal length "
                          "(FocalLengthIn35mmFilm, or FocalLength with the focal-plane resolution) when --focal is "
                          "not given.")] = True,
    principal_point: Annotated[Optional[str], typer.Option("--principal-point", metavar="CX,CY", help="Principal point "
                               "in pixels for every image (default: the image centre).")] = None,
    intrinsics: Annotated[Optional[Path], typer.Option("--intrinsics", metavar="FILE", help="Calibrated cameras: a "
                          'JSON file {"K": 3x3} for all images and/or {"images": {PATH: {"K": 3x3}}} per image '
                          "(pixels). Overrides --focal, --principal-point and EXIF; an image it does not cover is "
                          "an error. Format: docs/output.md.")] = None,
    aggregation: Annotated[Optional[str], typer.Option(help="code (RoI 0, default) or paper (mean fused feature).")] = None,
    view_azimuth: Annotated[Optional[float], typer.Option("--view-azimuth", help="ImpHMR checkpoints only: write "
                            "the mesh ImpHMR infers for a camera turned by DEG degrees about the vertical axis "
                            "(0 = the image's own view; docs/method.md §10).", metavar="DEG")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo every image, also those already finished with "
                         "the same settings (finished images made with other settings are redone anyway).")] = False,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, help="Image-decoding threads (default: "
                       "min(4, CPUs); 0 decodes in the loader thread).")] = None,
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
    sequence: Annotated[Optional[bool], typer.Option("--sequence/--no-sequence", help="Track persons through "
                        "sequences: each video (on by default for videos), and with --sequence each folder of frames "
                        "(sorted naturally); writes OUT/<sequence>/sequence.json and a track_XX.npz per person "
                        "(README: Sequences).", show_default=False, rich_help_panel="Sequences")] = None,
    smooth: Annotated[str, typer.Option("--smooth", help="Sequences: none, one-euro (causal filter on quaternions "
                      "and translation; lag up to ~0.1 s) or fit-window (the body model fitted to windows of frames "
                      "with an acceleration penalty; offline, no lag, slower).",
                      rich_help_panel="Sequences")] = "one-euro",
    fps: Annotated[Optional[float], typer.Option("--fps", min=0.001, help="Sequences: frames per second of folders "
                   "of frames (default 30) and of videos that state none.", rich_help_panel="Sequences")] = None,
    max_gap: Annotated[int, typer.Option("--max-gap", min=0, help="Sequences: frames a person may go unseen and "
                       "keep its track id.", rich_help_panel="Sequences")] = 10,
    min_track_frames: Annotated[int, typer.Option("--min-track-frames", min=1, help="Sequences: a person seen in "
                                "fewer frames gets no track (its results stay; sequence.json lists it under "
                                "short_tracks); 1 keeps every track.", rich_help_panel="Sequences")] = 3,
    executor: Annotated[str, typer.Option("--executor", help="local (this process) or ray (workers on a Ray "
                        "cluster, `pip install 'hmrcli[ray]'`; every node must see the inputs and --out at the same "
                        "paths). README: many machines.")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", metavar="auto|HOST:PORT", help="With "
                           "--executor ray: the cluster to join (auto: the one this machine belongs to; default: "
                           "start a local one).")] = None,
    ray_workers: Annotated[Optional[int], typer.Option("--ray-workers", min=1, help="With --executor ray: workers "
                           "(default: as many as the cluster's GPUs, or CPUs, allow).")] = None,
    gpus_per_worker: Annotated[float, typer.Option("--gpus-per-worker", min=0.0, help="With --executor ray: GPUs "
                               "per worker (fractions share a GPU; 0: CPU workers).")] = 0.0,
    cpus_per_worker: Annotated[float, typer.Option("--cpus-per-worker", min=0.01, help="With --executor ray: CPUs "
                               "per worker.")] = 1.0,
) -> None:
    """Reconstruct every person: mesh (.obj/.ply), camera JSON (hmrcli.camera/1) and
    parameters (.npz) per person under OUT/<image name>/ (+ overlay.png with --overlay).
    Without a regressor checkpoint the fitting engine runs (offline). Persons come from a detector
    (--detector, named on stderr; offline default: movenet, every person) or from --boxes FILE
    ('-' = stdin, e.g. `hmrcli detect IMAGES | hmrcli infer --boxes - ...`).

    Videos (and with --sequence folders of frames) are sequences: persons are tracked across
    frames and each track smoothed (--smooth), written as OUT/<video>/sequence.json and
    track_XX.npz; `hmrcli export` turns them into animated GLB / BVH.

    Re-runs skip images already finished with the same settings (OUT/manifest.jsonl) and redo
    the others; --shard I/N splits the inputs for job arrays; processes sharing OUT split the
    images (per-image locks); --executor ray spreads them over a Ray cluster. Ctrl-C / SIGTERM
    stop after the current batch of persons (a second one abandons it); a re-run finishes the
    rest. Layout, manifest, locks, Ray and signals: docs/output.md.

    Exit status: 0 all images done, 1 some failed (see OUT/errors.jsonl), 2 none succeeded
    or bad usage, 130 stopped by SIGINT (Ctrl-C), 143 stopped by SIGTERM."""
    # start-up: loads torch (~3 s), kept out of `hmrcli --help`
    from hmrcli.api import ENGINES, REFINEMENTS, RUNTIMES, EngineSpec
    from hmrcli.detect import DetectorUnavailable
    from hmrcli.intrinsics import (
        IntrinsicsError,
        load_intrinsics,
        parse_principal_point,
    )
    from hmrcli.nn.checkpoints import CheckpointError
    from hmrcli.pipeline import (
        SIGNAL_EXIT_CODES,
        InferOptions,
        StopRequest,
        images_per_step_for,
        run_inference,
    )
    from hmrcli.pipeline.ray_executor import ExecutorError, run_inference_ray

    as_json = want_json(json_out)
    fmts = tuple(f.strip().lower() for f in mesh_format.split(",") if f.strip())
    bad = [f for f in fmts if f not in ("obj", "ply")]
    if bad or not fmts:
        raise typer.BadParameter(f"unknown mesh format(s) {bad or mesh_format!r}: use obj and/or ply", param_hint="--mesh-format")
    if mesh_frame not in ("camera", "model"):
        raise typer.BadParameter("use camera or model", param_hint="--mesh-frame")
    from hmrcli.track import SMOOTHERS

    if smooth not in SMOOTHERS:
        raise typer.BadParameter(f"use {', '.join(SMOOTHERS)}", param_hint="--smooth")
    for value, allowed, hint in ((engine, ENGINES, "--engine"), (refine, REFINEMENTS, "--refine"),
                                 (landmarks, ("full", "heavy"), "--landmarks"), (pose_prior, ("relaxed", "gmm"), "--pose-prior"),
                                 (runtime, RUNTIMES, "--runtime")):
        if value not in allowed:
            raise typer.BadParameter(f"use {', '.join(allowed)}", param_hint=hint)
    if engine == "regress" and checkpoint is None:
        stderr.print("error: --engine regress needs a regressor checkpoint. Pass --checkpoint FILE or a name from "
                     "`hmrcli weights list` (hmrcli doctor shows which are found), or use --engine fit.",
                     markup=False, highlight=False)
        raise typer.Exit(2)
    batch: int | str = parse_batch_size(batch_size)
    if overlay_quality and not overlay:
        raise typer.BadParameter("--overlay-quality colours the overlay: add --overlay", param_hint="--overlay-quality")
    if executor not in ("local", "ray"):
        raise typer.BadParameter("use local or ray", param_hint="--executor")
    if executor == "local" and (ray_address or ray_workers or gpus_per_worker):
        raise typer.BadParameter("--ray-address, --ray-workers and --gpus-per-worker need --executor ray",
                                 param_hint="--executor")
    spec = EngineSpec(engine=engine, checkpoint=checkpoint, body_model=body_model, gender=gender, smpl_dir=smpl_dir,
                      device=device if executor == "ray" else resolve_device(device), precision=precision,
                      batch_size=batch, aggregation=aggregation, rois=rois, landmarks=landmarks,
                      pose_prior=pose_prior, refine=refine, compile=compile_net, runtime=runtime,
                      view_azimuth=view_azimuth, mirror=mirror)
    try:
        # with --executor ray the workers build their own engines; this one (on the CPU) checks the
        # options and the files here, before a cluster is started, and says which engine runs
        eng, choice = (spec if executor == "local" else replace(spec, device="cpu", precision="fp32", compile=False)).build()
        body = eng.body
    except DetectorUnavailable as e:
        stderr.print(f"error: the fitting engine needs MediaPipe's BlazePose (the [fit] extra; `make install-fit`): {e}",
                     markup=False, highlight=False)
        raise typer.Exit(2) from None
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        stderr.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    if engine == "auto" and not quiet:
        stderr.print(f"engine: {choice} ({choice.reason})", markup=False, highlight=False)
    if not eng.betas_applied and not quiet:
        stderr.print(f"note: the checkpoint regresses {eng.betas_space} betas, which mean nothing to the "
                     f"{body.info.name} body model: meshes use its mean shape (the betas are still saved).",
                     markup=False, highlight=False)
    try:
        table = load_intrinsics(intrinsics) if intrinsics is not None else None
        pp = parse_principal_point(principal_point) if principal_point is not None else None
    except IntrinsicsError as e:
        stderr.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    if table is not None and (focal or pp is not None):
        stderr.print("error: --intrinsics gives the whole camera: leave out --focal and --principal-point",
                     markup=False, highlight=False)
        raise typer.Exit(2)
    det, sources = detector_and_sources(images, detector, boxes, det_score, det_config, det_checkpoint, device,
                                        quiet=quiet, shard=shard, frame_stride=frame_stride,
                                        build=executor == "local")
    images_per_step = images_per_step_for(eng)  # (the regression batch, also in the Ray workers)
    if executor == "ray":  # checked; the workers build their own
        if hasattr(eng, "close"):
            eng.close()
        eng = None
    opts = InferOptions(out=out, mesh_formats=fmts, mesh_frame=mesh_frame, focal=focal, overwrite=overwrite,
                        checkpoint=str(checkpoint or ""), max_persons=max_persons, overlay=overlay,
                        exif_focal=exif_focal, principal_point=pp, intrinsics=table, min_quality=min_quality,
                        overlay_quality=overlay_quality,
                        workers=workers if workers is not None else min(4, os.cpu_count() or 1),
                        images_per_step=images_per_step)
    if sequence is None:  # default: videos are sequences, images are not
        sequence = any(getattr(src, "video", None) is not None for src in sources)
        folders = False
    else:
        folders = sequence
    if sequence:
        from hmrcli.pipeline.sequence import SequenceOptions
        from hmrcli.track import SmoothOptions, TrackerOptions

        opts.sequence = SequenceOptions(folders=folders, fps=fps, smooth=SmoothOptions(method=smooth),
                                        tracker=TrackerOptions(max_gap=max_gap, min_frames=min_track_frames), overlay=overlay, smpl_dir=smpl_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(f"{out}: no permission to write there")
    except OSError as e:
        stderr.print(f"error: cannot write the output folder: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    stop = StopRequest()
    report = _Reporter(len(sources), as_json=as_json, quiet=quiet)
    old_handlers = _install_signal_handlers(stop, report.signal_note)
    try:
        try:
            with report:
                if executor == "local":
                    summary = run_inference(sources, eng, opts, progress=report.event, detector=det, stop=stop)
                else:
                    summary = run_inference_ray(sources, spec.build, opts, detector_factory=det.build,
                                                progress=report.event, stop=stop, address=ray_address,
                                                workers=ray_workers, gpus_per_worker=gpus_per_worker,
                                                cpus_per_worker=cpus_per_worker)
        except DetectorUnavailable as e:
            stderr.print(f"error: detector: {e}", markup=False, highlight=False)
            raise typer.Exit(2) from None
        except ExecutorError as e:
            stderr.print(f"error: {e}", markup=False, highlight=False)
            raise typer.Exit(2) from None
        finally:
            if hasattr(det, "close"):
                det.close()
            if hasattr(eng, "close"):
                eng.close()
        report.summary(summary, out)
    except KeyboardInterrupt:  # a second signal outside the run: stop now, nothing is half-written
        sys.stdout.flush()
        raise typer.Exit(SIGNAL_EXIT_CODES.get(stop.reason or "SIGINT", 130)) from None
    finally:
        _restore_signal_handlers(old_handlers)
    sys.stdout.flush()
    raise typer.Exit(summary.exit_code)


def _install_signal_handlers(stop, note) -> dict:
    """SIGINT / SIGTERM: the first asks the run to stop after the current batch of persons, the second
    abandons the batch (KeyboardInterrupt; its images are redone by the next run), a third
    exits at once (as safe as kill -9: every file is written atomically)."""
    from hmrcli.pipeline import (  # start-up: loads torch (~3 s), kept out of `hmrcli --help`
        SIGNAL_EXIT_CODES,  # (was unbound here: the third signal raised NameError)
    )

    count = [0]

    def handler(signum, frame):
        name = signal.Signals(signum).name
        count[0] += 1
        if count[0] == 1:
            stop.request(name)
            note(name, "stopping after the current batch of persons (send it again to abandon it)")
        elif count[0] == 2:
            note(name, "abandoning the current batch")
            raise KeyboardInterrupt
        else:
            os._exit(SIGNAL_EXIT_CODES.get(stop.reason or name, 130))

    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):
                pass
    return old


def _restore_signal_handlers(old: dict) -> None:
    for sig, h in old.items():
        try:
            signal.signal(sig, h)
        except (ValueError, OSError, TypeError):
            pass


class _Reporter:
    """Progress of ``hmrcli infer``:

    * ``--json`` (the default when stdout is not a terminal): one JSON line per event on stdout
      (done, skipped, error, warning, redo, note), the summary last;
    * stderr a terminal (and not ``--quiet``): a rich progress bar with images/s and
      persons/s, errors and notes printed above it;
    * stderr not a terminal and stdout not JSON: the same events as JSON lines on stderr, each
      with ``completed``, ``total``, ``images_per_s`` and ``persons_per_s``, plus a ``persons``
      event after each batch of persons through the engine, the summary last.

    ``--quiet``: no progress and no per-image events (errors still go to OUT/errors.jsonl and
    to stderr outside JSON mode); the summary line is still written."""

    def __init__(self, total: int, as_json: bool, quiet: bool) -> None:
        self.total, self.as_json, self.quiet = total, as_json, quiet
        self.err_tty = sys.stderr.isatty()
        self.json_log = not as_json and not self.err_tty
        self.bar = None
        self.completed = 0
        self.persons = 0
        self.persons_worked = 0
        self.t0 = time.perf_counter()

    def __enter__(self) -> "_Reporter":
        if self.err_tty and not self.quiet:
            self.bar, self.task = progress_bar("infer", self.total, field="rate")
            self.bar.__enter__()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
            self.bar = None

    def _rates(self) -> tuple[float, float]:
        el = max(time.perf_counter() - self.t0, 1e-9)
        return self.completed / el, max(self.persons, self.persons_worked) / el

    def _line(self, text: str, style: str | None = None) -> None:
        con = self.bar.console if self.bar is not None else stderr
        if style:
            con.print(f"[{style}]{escape(text)}[/{style}]", highlight=False)
        else:
            con.print(text, markup=False, highlight=False)

    def event(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "note" and ev.get("left_out"):
            self.total -= int(ev["left_out"])
            if self.bar is not None:
                self.bar.update(self.task, total=self.total)
        if kind in ("done", "skipped", "error"):
            self.completed += 1
        if kind == "done":
            self.persons += ev.get("persons", 0)
        if kind == "persons":  # a batch of persons went through the engine (progress inside big images)
            self.persons_worked += int(ev.get("persons", 0))
            if self.bar is not None:
                ips, pps = self._rates()
                self.bar.update(self.task, rate=f"{ips:.2f} img/s {pps:.2f} persons/s")
            if self.json_log and not self.quiet:
                ips, pps = self._rates()
                _stderr_json({**ev, "completed": self.completed, "total": self.total,
                              "images_per_s": round(ips, 3), "persons_per_s": round(pps, 3)})
            return
        if self.as_json and not self.quiet:
            print_json(ev)
        if self.json_log:
            if not self.quiet or kind in ("error", "redo"):
                ips, pps = self._rates()
                _stderr_json({**ev, "completed": self.completed, "total": self.total,
                              "images_per_s": round(ips, 3), "persons_per_s": round(pps, 3)})
            return
        if not self.as_json or self.bar is not None:  # a person reads stderr
            if kind == "error":
                self._line(f"error {ev['file']} ({ev['stage']}): {ev['message']}", "red")
            elif kind == "warning" and not self.quiet:
                self._line(f"warning {ev['file']} ({ev['stage']}): {ev['message']}", "yellow")
            elif kind == "redo":
                self._line(f"note: redoing {ev['images']} image(s) that have results: {ev['reason']}")
            elif kind == "note" and not self.quiet:
                self._line(f"note: {ev['message']}")
            elif kind == "sequence" and (ev.get("error") or not self.quiet):
                if ev.get("error"):
                    self._line(f"error: {ev['error']}", "red")
                else:
                    state = "up to date" if ev.get("up_to_date") else f"tracked in {ev.get('seconds', 0):.1f} s"
                    short = f", {ev['short_tracks']} person(s) seen too briefly for a track" if ev.get("short_tracks") else ""
                    self._line(f"sequence {ev['name'] or '.'}: {ev['tracks']} track(s) over {ev['frames']} frames "
                               f"({ev['missing_frames']} without results{short}), {state}")
            elif kind == "done" and ev.get("persons") == 0 and not self.quiet:
                self._line(f"note: no person found in {ev['file']}")
        elif kind == "redo":  # JSON on stdout, no bar: still tell the person at the terminal
            self._line(f"note: redoing {ev['images']} image(s) that have results: {ev['reason']}")
        if self.bar is not None and kind in ("done", "skipped", "error"):
            ips, pps = self._rates()
            self.bar.update(self.task, completed=self.completed, rate=f"{ips:.2f} img/s {pps:.2f} persons/s")

    def signal_note(self, name: str, what: str) -> None:
        """From a signal handler: raw writes to fd 2 (no buffered stream is re-entered)."""
        if self.json_log:
            text = json.dumps({"event": "signal", "signal": name, "action": what}) + "\n"
        else:
            text = f"\n{name}: {what}\n"
        try:
            os.write(2, text.encode("utf-8"))
        except OSError:
            pass

    def summary(self, summary, out: Path) -> None:
        rec = summary.to_json()
        rec["out"] = str(out)
        if self.as_json:
            print_json(rec)
        elif self.json_log:
            _stderr_json(rec)
        elif not self.quiet or summary.interrupted:
            line = (f"{summary.done} done, {summary.skipped} skipped, {summary.failed} failed, "
                    f"{summary.persons} persons in {summary.seconds:.1f} s -> {out}")
            if summary.no_person or summary.persons_failed:
                line += (f"\n{summary.no_person} image(s) with no person found, {summary.persons_failed} person(s) "
                         f"found but not reconstructed (see {out}/errors.jsonl)")
            if summary.sequences or summary.sequences_failed:
                line += (f"\n{summary.sequences} sequence(s), {summary.tracks} track(s)"
                         + (f", {summary.sequences_failed} sequence(s) failed (see {out}/errors.jsonl)"
                            if summary.sequences_failed else ""))
            flagged = {f: n for f, n in summary.flags.items() if n}
            if flagged:
                line += "\nquality flags (persons): " + ", ".join(f"{f} {n}" for f, n in flagged.items())
            if summary.below_quality:
                line += f"\n{summary.below_quality} person(s) below --min-quality: no files (listed in result.json)"
            if summary.interrupted:
                line += (f"\ninterrupted ({summary.interrupted}): {summary.remaining} image(s) left; run the same "
                         "command again to finish them")
            stderr.print(line, markup=False, highlight=False)


def _stderr_json(obj: dict) -> None:
    sys.stderr.write(json_text(obj) + "\n")
    sys.stderr.flush()


def register(app: typer.Typer) -> None:
    app.command("infer")(infer)
