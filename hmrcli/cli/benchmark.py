"""``hmrcli benchmark``: 3DPW / Human3.6M accuracy (MPJPE, PA-MPJPE, PVE in mm) of a
checkpoint, next to the published figures (protocol: docs/method.md §7)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from hmrcli.cli._output import print_json, resolve_device, stderr, stdout, want_json


class _Dataset(str, Enum):
    pw3d = "3dpw"
    h36m = "h36m"


class _Boxes(str, Enum):
    dataset = "dataset"
    detect = "detect"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def benchmark(
    dataset: Annotated[Optional[_Dataset], typer.Option("--dataset", help="3dpw or h36m (Protocol 2).")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="3DPW root (sequenceFiles/ + imageFiles/, or "
                         "3dpw_test.npz + imageFiles/) or the folder of h36m_valid_protocol2.npz.")] = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", "-c", help="Checkpoint file or registry name.")] = None,
    split: Annotated[str, typer.Option(help="3DPW split (sequenceFiles/<split>).")] = "test",
    boxes: Annotated[_Boxes, typer.Option("--boxes", help="Person boxes: the dataset's (keypoint/annotation boxes), "
                                          "or a detector's, matched to each person by IoU.")] = _Boxes.dataset,
    detector: Annotated[str, typer.Option("--detector", help="--boxes detect: auto, mmdet, mediapipe, whole-image.")] = "auto",
    det_score: Annotated[Optional[float], typer.Option("--det-score", help="--boxes detect: score threshold.")] = None,
    smpl_dir: Annotated[Optional[str], typer.Option("--smpl-dir", envvar="HMRCLI_SMPL_DIR",
                                                    help="Folder with SMPL neutral/male/female and J_regressor_h36m.npy.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    batch_size: Annotated[Optional[list[int]], typer.Option("--batch-size", min=1, help="Persons per network call "
                          "(default 16; --speed: repeat the option for several).")] = None,
    aggregation: Annotated[Optional[str], typer.Option(help="Override the checkpoint's aggregation (code|paper).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N persons.", min=1)] = None,
    ground_truth: Annotated[bool, typer.Option("--ground-truth-predictor", help="Sanity check of data and protocol: "
                                               "predict the ground truth itself (expect 0 mm); no checkpoint.")] = False,
    speed: Annotated[bool, typer.Option("--speed", help="Speed instead of accuracy: persons/s for M RoIs with "
                                        "random weights (no dataset needed; see --rois, --batch-size, --repeats).")] = False,
    rois: Annotated[Optional[list[int]], typer.Option("--rois", help="--speed: RoI counts M (repeat the option).")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="--speed: timed runs, best kept.")] = 3,
    backbone: Annotated[str, typer.Option(help="--speed: backbone.")] = "resnet50",
    precision: Annotated[Optional[list[str]], typer.Option(metavar="fp32|bf16|fp16", help="--speed: fp32, bf16 or fp16 (repeat the option for "
                         "several; default fp32).")] = None,
    mode: Annotated[Optional[list[str]], typer.Option("--mode", metavar="eager|compiled", help="--speed: eager or compiled (torch.compile; "
                    "repeat for both; default eager).")] = None,
    runtime: Annotated[Optional[list[str]], typer.Option("--runtime", metavar="torch|onnx", help="--speed: torch or onnx (the same random "
                       "network exported and run by onnxruntime, fp32 eager only; repeat for both; default torch).")] = None,
    fresh_process: Annotated[bool, typer.Option("--fresh-process/--same-process",
                                                help="--speed: one process per configuration (honest peak memory).")] = True,
    images: Annotated[Optional[list[str]], typer.Option("--images", help="--speed: also time the whole pipeline "
                      "(decode -> detect -> crop -> network + body) on these image files/folders (repeat the option).")] = None,
    json_out: Annotated[Optional[bool], typer.Option("--json/--no-json", help="JSON output (default: JSON when "
                                                     "stdout is not a terminal).")] = None,
) -> None:
    """Evaluate a checkpoint on 3DPW or Human3.6M (MPJPE / PA-MPJPE / PVE, mm), overall and
    per sequence, beside the published figures. Needs the user's SMPL files and SPIN's
    J_regressor_h36m.npy. With --speed: regressor speed vs RoI count (paper Table 3)."""
    # start-up: loads torch (~3 s), kept out of `hmrcli --help`
    from hmrcli.bench.datasets import DatasetError
    from hmrcli.bench.evaluate import (
        BenchmarkAssetsError,
        GroundTruthPredictor,
        run_benchmark,
    )
    from hmrcli.detect import DetectorUnavailable

    dev = resolve_device(device)
    batches = batch_size or [16]
    if speed:
        _speed(rois or [1, 2, 3, 4, 5], batches, dev, precision or ["fp32"], repeats, backbone, fresh_process, json_out,
               images, detector, mode or ["eager"], runtime or ["torch"])
        return
    if len(batches) > 1:
        raise typer.BadParameter("one --batch-size for an accuracy benchmark (several only with --speed)")
    if dataset is None or data_root is None:
        raise typer.BadParameter("give --dataset and --data-root (or --speed)")
    if (checkpoint is None) == (not ground_truth):
        raise typer.BadParameter("give --checkpoint, or --ground-truth-predictor for a sanity check (not both)")
    try:
        rep = run_benchmark(dataset.value, data_root, checkpoint=checkpoint, split=split, boxes=boxes.value,
                            smpl_dir=smpl_dir, device=dev, batch_size=batches[0], aggregation=aggregation,
                            predictor=GroundTruthPredictor() if ground_truth else None, limit=limit,
                            detector=detector, detector_opts={"score_thr": det_score, "device": dev})
    except (BenchmarkAssetsError, DatasetError, DetectorUnavailable, FileNotFoundError, ValueError) as e:
        stderr.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    if want_json(json_out):
        print_json(rep)
        return
    stdout.print(f"[bold]{rep['dataset']}[/bold] {rep['split']}: {rep['count']} persons from {escape(rep['source'])}")
    stdout.print(f"predictor {escape(str(rep['predictor']))}  M={rep['num_rois'] or '-'}  aggregation "
                 f"{rep['aggregation'] or '-'}  device {rep['device']}  boxes {rep['boxes']}")
    if "detection" in rep:
        d = rep["detection"]
        stdout.print(f"detector {escape(str(d['detector']))}: {d['matched']} matched, "
                     f"{d['fallback_to_dataset_box']} without an overlapping detection (dataset box used)")
    tab = Table(title="Accuracy (mm)")
    for c in ("", "persons", "MPJPE", "PA-MPJPE", "PVE"):
        tab.add_column(c, justify="right" if c else "left")
    o = rep["overall"]
    tab.add_row("[bold]ours (overall)[/bold]", str(o["count"]), _fmt(o["MPJPE"]), _fmt(o["PA-MPJPE"]), _fmt(o["PVE"]))
    for p in rep["published"]:
        tab.add_row(f"published: {escape(p['source'])}", "", _fmt(p["MPJPE"]), _fmt(p["PA-MPJPE"]), _fmt(p["PVE"]))
    tab.add_section()
    for name, s in rep["sequences"].items():
        tab.add_row(escape(name), str(s["count"]), _fmt(s["MPJPE"]), _fmt(s["PA-MPJPE"]), _fmt(s["PVE"]))
    stdout.print(tab)
    stdout.print(f"protocol: {escape(rep['protocol'])}", style="dim")


def _pipeline_runner():
    """``hmrcli.bench.speed.PipelineRunner`` on :func:`hmrcli.pipeline.run_inference` (what
    ``hmrcli infer`` runs): OBJ meshes, camera JSON, results, manifest."""
    from hmrcli.pipeline import InferOptions, images_per_step_for, run_inference
    from hmrcli.sources import expand_inputs

    def run(paths, engine, detector, out):
        opts = InferOptions(out=out, images_per_step=images_per_step_for(engine), workers=min(4, os.cpu_count() or 1))
        summ = run_inference(expand_inputs([str(p) for p in paths]), engine, opts, detector=detector)
        return {"done": summ.done, "failed": summ.failed, "persons": summ.persons}

    return run


def _speed(rois, batches, device, precisions, repeats, backbone, fresh_process, json_out, images=None,
           detector="auto", modes=("eager",), runtimes=("torch",)) -> None:
    # start-up: loads torch (~3 s), kept out of `hmrcli --help`
    from hmrcli.bench.speed import MODES, RUNTIMES, configurations, speed_report
    from hmrcli.sources import expand_inputs

    for p in precisions:
        if p not in ("fp32", "bf16", "fp16"):
            raise typer.BadParameter(f"use fp32, bf16 or fp16; got {p!r}", param_hint="--precision")
    for m in modes:
        if m not in MODES:
            raise typer.BadParameter(f"use {' or '.join(MODES)}; got {m!r}", param_hint="--mode")
    for r in runtimes:
        if r not in RUNTIMES:
            raise typer.BadParameter(f"use {' or '.join(RUNTIMES)}; got {r!r}", param_hint="--runtime")
    if not configurations(precisions, modes, runtimes):
        raise typer.BadParameter("onnx runs the exported fp32 graph, eager: add --precision fp32 --mode eager",
                                 param_hint="--runtime")
    paths = [str(s.path) for s in expand_inputs(images)] if images else None
    rep = speed_report(backbone=backbone, rois=rois, batches=batches, device=device, precision=precisions,
                       repeats=repeats, fresh_process=fresh_process, images=paths, detector=detector or "auto",
                       compile=list(modes), runtimes=list(runtimes), run_pipeline=_pipeline_runner() if paths else None)
    if want_json(json_out):
        print_json(rep)
        return
    tab = Table(title=f"Regressor speed ({escape(rep['device_name'])}, {backbone})")
    for c in ("M", "batch", "precision", "mode", "runtime", "network ms/person", "network persons/s",
              "+body persons/s", "x M=1", "peak MiB", "paper fps (RTX 3090, batch 1)"):
        tab.add_column(c, justify="right")
    for r in rep["results"]:
        cfg = [str(r["num_rois"]), str(r["batch"]), str(r.get("precision", "")), str(r.get("mode", "")),
               str(r.get("runtime", ""))]
        if "error" in r:
            tab.add_row(*cfg, "[red]error[/red]", escape(" ".join(r["error"])), "", "", "", "")
            continue
        paper = rep["paper_table3_fps_rtx3090_batch1"].get(r["num_rois"])
        peak = r.get("peak_cuda_mib", r["peak_rss_mib"])
        tab.add_row(*cfg, f"{r['network']['ms_per_person']:.1f}", f"{r['network']['persons_per_s']:.1f}",
                    f"{r['network+body']['persons_per_s']:.1f}", _fmt(r.get("cost_vs_m1")), f"{peak:.0f}", _fmt(paper))
    stdout.print(tab)
    if rep.get("end_to_end"):
        tab = Table(title=f"End to end on {rep['end_to_end'][0]['images']} images "
                          f"(detector {escape(rep['end_to_end'][0]['detector'])})")
        for c in ("M", "precision", "mode", "runtime", "decode s", "detect s", "crop s", "network+body s",
                  "stages persons/s", "pipeline s", "images/s", "persons/s"):
            tab.add_column(c, justify="right")
        for r in rep["end_to_end"]:
            sec = r["seconds"]
            pl = r.get("pipeline") or {}
            tab.add_row(str(r["num_rois"]), r["precision"], r["mode"], r["runtime"], f"{sec['decode']:.3f}",
                        f"{sec['detect']:.3f}", f"{sec['crop']:.3f}", f"{sec['network+body']:.3f}",
                        _fmt(r["persons_per_s"]), _fmt(pl.get("seconds")), _fmt(pl.get("images_per_s")),
                        _fmt(pl.get("persons_per_s")))
        stdout.print(tab)
    stdout.print(escape(rep["note"]), style="dim")


def register(app: typer.Typer) -> None:
    app.command("benchmark")(benchmark)
