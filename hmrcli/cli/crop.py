"""``hmrcli crop``: the Multi-RoI crops of every detected person, as images + geometry JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hmrcli.cli._output import print_json, want_json
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
    note,
)


def crop(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help=INPUTS_HELP + " A .json COCO annotations file (or one on stdin) gives boxes too.",
        show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("crops"),
    num_rois: Annotated[int, typer.Option("--num-rois", "-m", min=1, max=5, help="RoIs per person (the first M "
                        "of the fixed Multi-RoI layout).")] = 5,
    crop_kind: Annotated[str, typer.Option("--crop", help="rect (256x192, CLIFF / authors' code) or square "
                         "(224x224, paper).")] = "rect",
    focal: Annotated[Optional[float], typer.Option(help="Focal length in pixels for bbox_info "
                     "(default sqrt(W^2 + H^2)).")] = None,
    rescale: Annotated[Optional[float], typer.Option(help="Box enlargement (default 1.1 rect, 1.2 square).")] = None,
    detector: DetectorOpt = "auto",
    boxes: BoxesOpt = None,
    det_score: DetScoreOpt = None,
    det_config: DetConfigOpt = None,
    det_checkpoint: DetCheckpointOpt = None,
    max_persons: MaxPersonsOpt = None,
    device: Annotated[str, typer.Option(help="mmdet: cpu, cuda, cuda:N or auto.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    json_out: Annotated[Optional[bool], typer.Option("--json/--no-json", help="JSON lines on stdout "
                        "(default when not a terminal): one hmrcli.crop-event/1 line per image (with its boxes, "
                        "so `hmrcli crop ... | hmrcli infer -` works), errors, a summary.")] = None,
    shard: ShardOpt = None,
    frame_stride: FrameStrideOpt = 1,
) -> None:
    """Write, per person, the M RoI crops (OUT/<image>/person_00.roi0.png ...) and their
    geometry (person_00.crops.json, schema hmrcli.crops/1: crop box, RoI boxes, image->crop
    affines, bbox_info, crop size, focal). `hmrcli detect IMAGES | hmrcli crop - --out DIR`
    works. Exit status: 0 all images done, 1 some failed (OUT/errors.jsonl), 2 none or bad usage."""
    # start-up: loads torch (~3 s), kept out of `hmrcli --help`
    from hmrcli.crop_export import CropOptions, run_crops
    from hmrcli.detect import detect_sources

    kind = crop_kind.strip().lower()
    if kind not in ("rect", "square"):
        raise typer.BadParameter("use rect or square", param_hint="--crop")
    if focal is not None and focal <= 0:
        raise typer.BadParameter("must be positive", param_hint="--focal")
    if rescale is not None and rescale <= 0:
        raise typer.BadParameter("must be positive", param_hint="--rescale")
    as_json = want_json(json_out)

    det, sources = detector_and_sources(inputs, detector, boxes, det_score, det_config, det_checkpoint, device,
                                        quiet=quiet, shard=shard, frame_stride=frame_stride)

    opts = CropOptions(out=out, num_rois=num_rois, aspect=kind, rescale=rescale, focal=focal)

    def progress(ev):
        if as_json:
            if not quiet:
                print_json(ev)
        elif ev["event"] == "error":
            note(f"error ({ev['stage']}): {ev['message']}")
        elif not quiet and ev["event"] == "done" and ev["persons"] == 0:
            note(f"note: no person in {ev['file']}")

    summary = run_crops(detect_sources(sources, det, max_persons=max_persons), opts, progress)
    if hasattr(det, "close"):
        det.close()
    rec = summary.to_json()
    rec["out"] = str(out)
    if as_json:
        print_json(rec)
    elif not quiet:
        note(f"crop: {summary.done} images, {summary.persons} persons, {summary.crops} crops, {summary.failed} failed "
             f"in {summary.seconds:.1f} s -> {out}")
    sys.stdout.flush()
    raise typer.Exit(summary.exit_code)


def register(app: typer.Typer) -> None:
    app.command("crop")(crop)
