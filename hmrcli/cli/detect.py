"""``hmrcli detect``: person boxes as JSON lines (``hmrcli.detections/1``); the detector
options shared with ``hmrcli crop`` and ``hmrcli infer``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from hmrcli.cli._output import resolve_device
from hmrcli.files import json_text

DETECTOR_HELP = (
    "Person detector: auto (mmdet when installed with a checkpoint, else movenet), "
    "mmdet (MMDetection, every person), movenet (MoveNet MultiPose, shipped, offline: every person, up to 6 "
    "per pass), mediapipe (BlazePose, offline: every person whose head is in view, at least 40 px tall), "
    "boxes (read --boxes FILE), whole-image (each image is one person filling it, for pre-cropped person images)."
)

DetectorOpt = Annotated[str, typer.Option("--detector", "-d", help=DETECTOR_HELP, rich_help_panel="Detection")]
BoxesOpt = Annotated[Optional[str], typer.Option(
    "--boxes", help="Read person boxes instead of detecting: hmrcli detect JSON lines or a COCO annotations "
    "JSON (person category; bbox x, y, w, h); '-' reads stdin. Implies --detector boxes.",
    rich_help_panel="Detection")]
DetScoreOpt = Annotated[Optional[float], typer.Option(
    "--det-score", min=0.0, max=1.0, help="Minimum detection score (default 0.5; with --boxes: keep all).",
    rich_help_panel="Detection")]
DetConfigOpt = Annotated[Optional[str], typer.Option(
    "--det-config", help="mmdet: detector config (file or name).", rich_help_panel="Detection")]
DetCheckpointOpt = Annotated[Optional[str], typer.Option(
    "--det-checkpoint", help="mmdet: detector checkpoint file.",
    rich_help_panel="Detection")]
MaxPersonsOpt = Annotated[Optional[int], typer.Option(
    "--max-persons", min=1, help="Keep at most N persons per image (highest scores).", rich_help_panel="Detection")]

INPUTS_HELP = (
    "Image files, folders (recursive; images recognised by content), globs, videos (one input per kept frame, "
    "see --frame-stride), record files (.jsonl: hmrcli detect / crop output) or '-': stdin, one path per line "
    "or JSON lines from an earlier stage (hmrcli detect | ..., hmrcli crop --json | ...), whose boxes are then "
    "used instead of a detector. With --boxes and no inputs: the images the boxes name."
)
ShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", metavar="I/N", help="Process only shard I of N (0 <= I < N), for job arrays: the expanded, sorted "
    "input list is cut into N contiguous blocks of nearly equal size (e.g. --shard $SLURM_ARRAY_TASK_ID/8 with "
    "--array=0-7). Deterministic: the same inputs give the same split.", rich_help_panel="Inputs")]
FrameStrideOpt = Annotated[int, typer.Option(
    "--frame-stride", min=1, help="Videos: keep frames 0, N, 2N, ...; each kept frame is one input named "
    "<video name>/frame_000123.png (frame index).", rich_help_panel="Inputs")]


def note(msg: str) -> None:
    """One plain line on stderr (no wrapping, no markup)."""
    sys.stderr.write(msg.rstrip("\n") + "\n")
    sys.stderr.flush()


def detector_spec(detector: str, boxes: Optional[str], det_score: Optional[float], det_config: Optional[str],
                  det_checkpoint: Optional[str], device: str = "auto", batch_size: Optional[int] = None,
                  records: Optional[list] = None, records_name: str = "<records>", resolve: bool = True) -> Any:
    """The detector the options ask for, as a :class:`hmrcli.detect.DetectorSpec`; usage
    problems exit with status 2. ``records`` (``hmrcli.detections/1`` records read with the
    inputs) make it the boxes detector over those records, unless another detector is named
    explicitly. ``resolve``: resolve ``--device auto`` here (False: where it is built)."""
    # start-up: loads numpy (~0.2 s), kept out of `hmrcli --help`
    from hmrcli.detect import DETECTORS, DetectorSpec

    name = detector.strip().lower()
    if name not in ("auto", *DETECTORS):
        raise typer.BadParameter(f"unknown detector {detector!r}: use auto, {', '.join(DETECTORS)}",
                                 param_hint="--detector")
    if records is not None:
        if boxes is not None:
            raise typer.BadParameter("the inputs already carry boxes (records); drop --boxes", param_hint="--boxes")
        if name in ("auto", "boxes"):
            name = "boxes"
        else:
            records = None  # an explicit detector re-detects the images the records name
    if boxes is not None:
        if name not in ("auto", "boxes"):
            raise typer.BadParameter(f"--boxes reads boxes instead of running a detector; drop --detector {name}",
                                     param_hint="--boxes")
        name = "boxes"
    elif name == "boxes" and records is None:
        raise typer.BadParameter("--detector boxes needs --boxes FILE ('-' for stdin)", param_hint="--boxes")
    elif name == "auto" and (det_config or det_checkpoint):
        name = "mmdet"  # asked for an mmdet model: no silent fallback to another detector
    if name != "mmdet" and name != "auto" and (det_config or det_checkpoint):
        note(f"warning: --det-config/--det-checkpoint are for mmdet; the {name} detector ignores them")
    opts: dict[str, Any] = {"score_thr": det_score, "config": det_config, "checkpoint": det_checkpoint,
                            "batch_size": batch_size}
    if name in ("auto", "mmdet"):
        opts["device"] = resolve_device(device) if resolve else device
    if name == "boxes":
        if records is not None:
            opts["records"] = records
        else:
            opts["source"] = boxes
    return DetectorSpec(name, opts, source=records_name if records is not None else None,
                        requested=name if detector.strip().lower() != "auto" else "auto")


def build_detector(spec: Any, quiet: bool = False) -> Any:
    """Build a detector spec here, print which detector runs on stderr; an unavailable
    backend exits with status 2 and a message saying how to fix it."""
    # start-up: loads numpy (~0.2 s), kept out of `hmrcli --help`
    from hmrcli.detect import DetectorUnavailable, detection_summary

    try:
        det = spec.build()
    except DetectorUnavailable as e:
        note(f"error: detector {spec.name} is not available: {e}")
        raise typer.Exit(2) from None
    except (FileNotFoundError, ValueError) as e:
        note(f"error: {e}")
        raise typer.Exit(2) from None
    if not quiet:
        note(detection_summary(det))
    return det


def make_detector(detector: str, boxes: Optional[str], det_score: Optional[float], det_config: Optional[str],
                  det_checkpoint: Optional[str], device: str = "auto", batch_size: Optional[int] = None,
                  quiet: bool = False, records: Optional[list] = None, records_name: str = "<records>") -> Any:
    """Build the detector the options ask for (:func:`detector_spec`, :func:`build_detector`)."""
    return build_detector(detector_spec(detector, boxes, det_score, det_config, det_checkpoint, device, batch_size,
                                        records, records_name), quiet)


def _expand(images: Optional[list[str]], frame_stride: int) -> list:
    """expand_inputs with usage errors (bad record lines on stdin, ...) as exit status 2."""
    # start-up: loads numpy (~0.2 s), kept out of `hmrcli --help`
    from hmrcli.sources import expand_inputs

    try:
        return expand_inputs(images or [], frame_stride=frame_stride)
    except (ValueError, OSError) as e:
        note(f"error: {e}")
        raise typer.Exit(2) from None


def _finish(sources: list, shard: Optional[str]) -> list:
    # start-up: loads numpy (~0.2 s), kept out of `hmrcli --help`
    from hmrcli.sources import parse_shard, shard_sources

    if not sources:
        note("error: no input images found")
        raise typer.Exit(2)
    if shard is not None:
        try:
            i, n = parse_shard(shard)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--shard") from None
        total = len(sources)
        sources = shard_sources(sources, i, n)
        if not sources:  # more shards than inputs: nothing to do here, which is no failure
            note(f"note: shard {i}/{n} of {total} inputs is empty")
    return sources


def _records_of(sources: list) -> Optional[list]:
    """The records the sources came with (all of them, or None when none has one)."""
    with_rec = [s for s in sources if s.record is not None]
    if not with_rec:
        return None
    if len(with_rec) != len(sources):
        note("error: inputs mix records (with boxes) and plain images; give them in separate runs")
        raise typer.Exit(2)
    return [s.record for s in sources]


def _sources_from_det(det) -> list:
    if det.name == "boxes":
        # start-up: loads numpy (~0.2 s), kept out of `hmrcli --help`
        from hmrcli.sources import sources_from_records

        return sources_from_records(det.records)
    raise typer.BadParameter("give images (files, folders, globs, videos or '-' for stdin)", param_hint="IMAGES")


def detector_and_sources(images: Optional[list[str]], detector: str, boxes: Optional[str], det_score: Optional[float],
                         det_config: Optional[str], det_checkpoint: Optional[str], device: str = "auto",
                         batch_size: Optional[int] = None, quiet: bool = False, shard: Optional[str] = None,
                         frame_stride: int = 1, build: bool = True) -> tuple[Any, list]:
    """Read the inputs, then build the detector: (detector, sources). Inputs that carry
    records (``hmrcli detect ... | hmrcli infer -``) use their boxes unless a detector is
    named explicitly; usage errors exit with status 2. ``build`` False: (a
    :class:`hmrcli.detect.DetectorSpec` to build elsewhere, e.g. in the workers of a cluster,
    sources); given boxes are read here (a file or stdin the workers may not see)."""
    # start-up: loads numpy (~0.2 s), kept out of `hmrcli --help`
    from hmrcli.detect import DetectorSpec

    if images:
        if boxes == "-" and "-" in images:
            raise typer.BadParameter("stdin cannot hold both the inputs and the boxes", param_hint="--boxes")
        sources = _expand(images, frame_stride)
        records = _records_of(sources)
        spec = detector_spec(detector, boxes, det_score, det_config, det_checkpoint, device, batch_size,
                             records=records, records_name="<stdin>" if "-" in images else "the input records",
                             resolve=build)
        det = build_detector(spec, quiet) if build or (spec.name == "boxes" and "source" in spec.options) else spec
    else:
        spec = detector_spec(detector, boxes, det_score, det_config, det_checkpoint, device, batch_size, resolve=build)
        det = build_detector(spec, quiet)
        sources = _sources_from_det(det)
    if not build and not isinstance(det, DetectorSpec):  # boxes read here, handed on as records
        det = DetectorSpec("boxes", {"records": det.records, "score_thr": det_score}, source=det.source,
                           requested=spec.requested)
    return det, _finish(sources, shard)


def detect(
    images: Annotated[Optional[list[str]], typer.Argument(help=INPUTS_HELP, show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the JSON lines to this file "
                   "(atomically, when done) instead of stdout.")] = None,
    detector: DetectorOpt = "auto",
    boxes: BoxesOpt = None,
    det_score: DetScoreOpt = None,
    det_config: DetConfigOpt = None,
    det_checkpoint: DetCheckpointOpt = None,
    max_persons: MaxPersonsOpt = None,
    device: Annotated[str, typer.Option(help="mmdet: cpu, cuda, cuda:N or auto.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per detector call.")] = 8,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    shard: ShardOpt = None,
    frame_stride: FrameStrideOpt = 1,
) -> None:
    """Find the people in images: one JSON line per image on stdout or --out (schema
    hmrcli.detections/1: path, name, width, height, and per person box_xyxy in pixels, score,
    class, detector; docs/records.md). The detector that runs is named on stderr.

    movenet, the offline default when no MMDetection checkpoint is installed, finds every
    person (up to 6 per pass); mediapipe every person whose head is in view. Images where
    nobody is found get an empty person list and are counted on stderr.

    Exit status: 0 all images done, 1 some failed (named on stderr), 2 all failed or bad usage."""
    # start-up: loads numpy (~0.2 s), kept out of `hmrcli --help`
    from hmrcli.detect import detect_sources
    from hmrcli.export.writers import atomic_write_text
    from hmrcli.records import batch_exit_code, detection_record

    det, sources = detector_and_sources(images, detector, boxes, det_score, det_config, det_checkpoint, device,
                                        batch_size, quiet, shard=shard, frame_stride=frame_stride)

    t0 = time.perf_counter()
    lines: list[str] = []
    n_ok = n_failed = n_persons = n_empty = 0
    for r in detect_sources(sources, det, batch_size=batch_size, max_persons=max_persons):
        if r.error is not None:
            n_failed += 1
            note(f"error ({r.error[0]}): {r.error[1]}")
            continue
        n_ok += 1
        n_persons += len(r.detections)
        n_empty += not r.detections
        line = json_text(detection_record(str(r.source.path), r.width, r.height,
                                          [d.to_json() for d in r.detections], detector=det.name, source=r.source))
        if out is None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        else:
            lines.append(line)
    if out is not None:
        try:
            atomic_write_text(out, "".join(x + "\n" for x in lines))
        except OSError as e:
            note(f"error: {out}: cannot write ({e.strerror or e})")
            raise typer.Exit(2) from None
    if hasattr(det, "close"):
        det.close()
    if not quiet:
        note(f"detect: {n_ok} images, {n_persons} persons, {n_failed} failed in {time.perf_counter() - t0:.1f} s"
             + (f" -> {out}" if out is not None else "")
             + (f"; no person found in {n_empty} image(s)" if n_empty else ""))
    raise typer.Exit(batch_exit_code(n_failed, n_ok))


def register(app: typer.Typer) -> None:
    app.command("detect")(detect)
