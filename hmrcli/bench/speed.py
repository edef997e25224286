"""Regressor speed: persons/s and ms/person for M RoIs (the analogue of the Multi-RoI
paper's Table 3), network alone (crops already prepared) and network + body model.

Random weights (speed does not depend on their values); best of ``repeats`` timed runs
after one warm-up. ``fresh_process=True`` measures each configuration in a new Python
process so that its peak resident memory is its own.

Every configuration is a combination of M (RoIs), batch size, precision (fp32 / bf16 / fp16),
mode (eager / ``torch.compile``d) and runtime (torch / onnxruntime on a graph exported from
the same random network by :func:`hmrcli.weights.onnx_regressor.export_onnx`; fp32, eager
only). End to end (``images``): per stage in sequence (decode, detect, crop, network + body),
and the real pipeline (:func:`hmrcli.pipeline.run_inference`: loader thread, batches across
images, files written) from the image files on disk to the meshes and JSON on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from hmrcli.body import load_body_model
from hmrcli.detect import create_detector, detect_images
from hmrcli.detect.base import DetectorUnavailable
from hmrcli.engine.regress import PersonBox, RegressionEngine
from hmrcli.nn.checkpoints import RegressorConfig, build_model
from hmrcli.sources import read_image

__all__ = ["PAPER_TABLE3_FPS_RTX3090", "RUNTIMES", "MODES", "measure_crops", "measure_speed", "measure_pipeline",
           "speed_report", "configurations"]

#: what runs the network: torch (the engine's own), onnx (onnxruntime on an exported graph)
RUNTIMES = ("torch", "onnx")
#: eager or torch.compile'd network (torch runtime only)
MODES = ("eager", "compiled")


def configurations(precisions: Sequence[str], modes: Sequence[str], runtimes: Sequence[str]
                   ) -> list[tuple[str, str, str]]:
    """The (precision, mode, runtime) combinations that exist: onnxruntime runs the exported
    fp32 graph (no autocast, no torch.compile), so onnx appears once per list, with fp32 and
    eager, when those are asked for."""
    out = []
    for p, m, r in itertools.product(precisions, modes, runtimes):
        if r == "onnx" and (p != "fp32" or m != "eager"):
            continue
        out.append((p, m, r))
    return out


@contextlib.contextmanager
def _network(cfg: RegressorConfig, runtime: str, device: str) -> Iterator[Any]:
    """A random network of ``cfg`` (seed 0) for ``runtime``: the torch model, or the same
    model exported to ONNX (in a temporary folder, parity-checked by the exporter) and run by
    onnxruntime on ``device``'s execution providers."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.config = cfg
    if runtime == "torch":
        yield model
        return
    if runtime != "onnx":
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    # start-up: onnx export machinery (onnxscript), only for this runtime
    from hmrcli.weights.onnx_regressor import OnnxRegressor, export_onnx

    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)  # (same config, same seed: same weights)
    if key not in _ONNX_EXPORTS:  # one export per network in a process (the graph's batch axis is dynamic)
        if not _ONNX_DIR:
            _ONNX_DIR.append(tempfile.TemporaryDirectory(prefix="hmrcli-speed-"))
        path = Path(_ONNX_DIR[0].name) / f"regressor{len(_ONNX_EXPORTS)}.onnx"
        export_onnx(model, cfg, path, parity_batches=(1,))
        _ONNX_EXPORTS[key] = path
    yield OnnxRegressor(_ONNX_EXPORTS[key], device=device)


#: ONNX files exported in this process (network config -> file), in one temporary folder
#: removed at exit
_ONNX_EXPORTS: dict[str, Path] = {}
_ONNX_DIR: list[tempfile.TemporaryDirectory] = []

PAPER_TABLE3_FPS_RTX3090 = {1: 76.3, 2: 63.5, 3: 61.7, 4: 57.3, 5: 55.6}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def measure_crops(model: torch.nn.Module, body, batch: int, device: str = "cpu", repeats: int = 3,
                  image_wh: tuple[int, int] = (1920, 1080), persons_per_image: int = 2) -> dict[str, Any]:
    """The two crop paths of :class:`RegressionEngine` on ``batch`` persons (``persons_per_image``
    per synthetic ``image_wh`` image): ``cv2`` = ``prepare`` cutting each RoI with OpenCV + the
    upload of the crops; ``torch`` = ``prepare`` keeping the image (pinned on CUDA) + one
    ``grid_sample`` on the device (:func:`hmrcli.geometry.crop_batch`). ms per person, best of
    ``repeats``."""
    rng = np.random.default_rng(0)
    w, h = image_wh
    n_img = max(1, -(-batch // persons_per_image))
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n_img)]
    persons = []
    for k in range(n_img):
        n = min(persons_per_image, batch - k * persons_per_image)
        cx, cy = rng.uniform(0.2, 0.8, n) * w, rng.uniform(0.3, 0.7, n) * h
        bh = rng.uniform(0.3, 0.8, n) * h
        persons.append([PersonBox(np.array([x - 0.2 * b, y - 0.5 * b, x + 0.2 * b, y + 0.5 * b]))
                        for x, y, b in zip(cx, cy, bh)])
    out: dict[str, Any] = {"images": f"{n_img} x {w}x{h}", "persons": batch}
    for path in ("cv2", "torch"):
        eng = RegressionEngine(model, body, device=device, precision="fp32", batch_size=batch, crops=path)

        def step() -> None:
            prepared = [(eng.prepare(im, ps), ps) for im, ps in zip(images, persons)]
            flat = [(i, j) for i, (_, ps) in enumerate(prepared) for j in range(len(ps))]
            eng.batch_crops(prepared, flat)
            _sync(device)

        step()  # warm-up
        out[f"{path}_ms_per_person"] = round(_best_ms(step, repeats) / batch, 2)
    return out


def measure_speed(backbone: str = "resnet50", num_rois: int = 5, batch: int = 1, device: str = "cpu",
                  precision: str = "fp32", repeats: int = 3, body: str = "free", backbone_chunk: int | None = None,
                  channels_last: bool | None = None, compile: bool = False, crops: bool = True,
                  runtime: str = "torch") -> dict[str, Any]:
    """One configuration in this process -> timings (ms/person, persons/s) and peak memory (MiB).
    The network runs as :meth:`RegressionEngine.forward_network` (the engine's precision,
    memory format, backbone chunking, compilation: ``settings`` in the result; None: the
    engine's per-device defaults) on random 0..255 crops; ``crops``: also time the two crop
    paths (:func:`measure_crops`, before the network so that peak memory stays the network's
    plus the images'). ``runtime`` ``onnx``: the same network exported and run by onnxruntime
    (fp32, not compiled)."""
    cfg = RegressorConfig(arch="multiroi", backbone=backbone, num_rois=num_rois)
    with _network(cfg, runtime, device) as model:
        return _measure_network(model, cfg, batch, device, precision, repeats, body, backbone_chunk, channels_last,
                                compile, crops, runtime)


def _measure_network(model, cfg, batch, device, precision, repeats, body, backbone_chunk, channels_last, compile,
                     crops, runtime) -> dict[str, Any]:
    bm = load_body_model(body)
    crop_times = measure_crops(model, bm, batch, device, repeats) if crops else None
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    engine = RegressionEngine(model, bm, device=device, precision=precision, batch_size=batch,
                              backbone_chunk=backbone_chunk, channels_last=channels_last, compile=compile)
    num_rois = cfg.num_rois
    x = torch.rand(batch, num_rois, 3, *cfg.crop_hw, device=device) * 255
    info = torch.randn(batch, num_rois, 3, device=device) * 0.3

    def step(with_body: bool) -> None:
        out = engine.forward_network(x, info)
        if with_body:
            bm(out["rotmats"], out["betas"])
        _sync(device)

    step(True)  # warm-up
    res = {}
    for key, with_body in (("network", False), ("network+body", True)):
        best = _best_ms(lambda: step(with_body), repeats) / 1000
        res[key] = {"ms_per_person": round(1000 * best / batch, 2), "persons_per_s": round(batch / best, 2)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    settings = {k: v for k, v in engine.settings().items() if k not in ("device", "precision", "batch_size", "crops")}
    out = {"backbone": cfg.backbone, "num_rois": num_rois, "batch": batch, "device": device,
           "precision": engine.precision, "mode": "compiled" if compile else "eager", "runtime": runtime,
           "body_model": body, **res, "settings": settings, "peak_rss_mib": round(peak, 1)}
    if crop_times is not None:
        out["crops"] = crop_times
    if device.startswith("cuda"):
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


#: runs the real pipeline for :func:`measure_pipeline`: ``(image paths, engine, detector, out
#: folder) -> summary dict`` (``done``, ``failed``, ``persons``); the command line passes one
#: built on :func:`hmrcli.pipeline.run_inference` (the pipeline sits beside this room, so it is
#: handed in rather than imported)
PipelineRunner = Callable[[Sequence[str], Any, Any, Path], dict[str, Any]]


def measure_pipeline(images: Sequence[str], backbone: str = "resnet50", num_rois: int = 5, batch: int = 16,
                     device: str = "cpu", precision: str = "fp32", detector: str = "auto",
                     body: str = "free", backbone_chunk: int | None = None, channels_last: bool | None = None,
                     compile: bool = False, runtime: str = "torch",
                     run_pipeline: PipelineRunner | None = None) -> dict[str, Any]:
    """End to end over real image files: decode -> detect -> crop (RoIs) -> network + body
    model, each stage timed in sequence (seconds in total, ms per image / per person); one pass
    after a warm-up on the first image; random regressor weights (``runtime``: torch or onnx).
    "crop" is ``engine.prepare``: on CUDA the engine cuts the crops on the device in ``run``
    (its torch crop path), so there "crop" holds the RoI geometry and "network+body" the crops.

    With ``run_pipeline``, also the real pipeline over the same files into a temporary folder
    (loader thread and decoding threads overlapping the network, batches across images,
    every mesh / camera JSON / result written): ``pipeline`` = seconds, images/s, persons/s,
    peak GPU memory (CUDA), after a warm-up run on the first image."""
    cfg = RegressorConfig(arch="multiroi", backbone=backbone, num_rois=num_rois)
    with _network(cfg, runtime, device) as model:
        engine = RegressionEngine(model, load_body_model(body), device=device, precision=precision, batch_size=batch,
                                  backbone_chunk=backbone_chunk, channels_last=channels_last, compile=compile)
        try:
            det = create_detector(detector)
        except DetectorUnavailable:
            det = create_detector("whole-image")
        out = _stages(images, engine, det, device)
        out.update(num_rois=num_rois, batch=batch, precision=engine.precision,
                   mode="compiled" if compile else "eager", runtime=runtime)
        if run_pipeline is not None:
            out["pipeline"] = _pipeline(images, engine, det, device, run_pipeline)
    return out


def _stages(images: Sequence[str], engine: RegressionEngine, det: Any, device: str) -> dict[str, Any]:
    stage = {"decode": 0.0, "detect": 0.0, "crop": 0.0, "network+body": 0.0}

    def one_pass(paths: Sequence[str], timed: bool) -> int:
        n = 0
        prepared = []
        for p in paths:
            t0 = time.perf_counter()
            img = read_image(p)
            t1 = time.perf_counter()
            dets = detect_images(det, [img], [p])[0]
            t2 = time.perf_counter()
            boxes = [PersonBox(d.box_xyxy, d.score, d.detector) for d in dets]
            if boxes:
                prepared.append((engine.prepare(img, boxes), boxes))
            t3 = time.perf_counter()
            n += len(boxes)
            if timed:
                stage["decode"] += t1 - t0
                stage["detect"] += t2 - t1
                stage["crop"] += t3 - t2
        t4 = time.perf_counter()
        if prepared:
            engine.run(prepared)
        _sync(device)
        if timed:
            stage["network+body"] += time.perf_counter() - t4
        return n

    one_pass(list(images)[:1], timed=False)  # warm-up
    persons = one_pass(list(images), timed=True)
    total = sum(stage.values())
    n_img = len(images)
    return {
        "detector": det.name, "images": n_img, "persons": persons, "settings": engine.settings(),
        "seconds": {k: round(v, 4) for k, v in stage.items()},
        "ms_per_image": round(1000 * total / max(n_img, 1), 2),
        "ms_per_person": round(1000 * total / max(persons, 1), 2) if persons else None,
        "persons_per_s": round(persons / total, 2) if total > 0 else None,
    }


def _pipeline(images: Sequence[str], engine: RegressionEngine, det: Any, device: str,
              run_pipeline: PipelineRunner) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hmrcli-speed-") as d:
        run_pipeline(list(images)[:1], engine, det, Path(d) / "warm-up")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        summ = run_pipeline(list(images), engine, det, Path(d) / "run")
        sec = time.perf_counter() - t0
        files = sum(1 for p in (Path(d) / "run").rglob("*") if p.is_file())
    out = {"seconds": round(sec, 4), "images_done": summ["done"], "failed": summ["failed"],
           "persons": summ["persons"], "files_written": files,
           "images_per_s": round(summ["done"] / sec, 2) if sec > 0 else None,
           "persons_per_s": round(summ["persons"] / sec, 2) if sec > 0 else None}
    if device.startswith("cuda"):
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _child(kwargs: dict[str, Any]) -> dict[str, Any]:
    code = "import json,sys;from hmrcli.bench.speed import measure_speed;print(json.dumps(measure_speed(**json.loads(sys.argv[1]))))"
    r = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True)
    if r.returncode != 0:
        return {"num_rois": kwargs["num_rois"], "batch": kwargs["batch"], "precision": kwargs["precision"],
                "mode": "compiled" if kwargs.get("compile") else "eager", "runtime": kwargs.get("runtime", "torch"),
                "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def speed_report(backbone: str = "resnet50", rois: Sequence[int] = (1, 2, 3, 4, 5), batches: Sequence[int] = (1, 16),
                 device: str = "cpu", precision: str | Sequence[str] = "fp32", repeats: int = 3, body: str = "free",
                 fresh_process: bool = True, images: Sequence[str] | None = None,
                 detector: str = "auto", backbone_chunk: int | None = None, channels_last: bool | None = None,
                 compile: bool | Sequence[str] = False, crops: bool = True, runtimes: Sequence[str] = ("torch",),
                 run_pipeline: PipelineRunner | None = None) -> dict[str, Any]:
    """Every (batch, M, precision, mode, runtime) configuration (:func:`configurations`) ->
    ``{"benchmark", "device_name", "torch", "note", "paper_table3_fps_rtx3090_batch1",
    "results": [...], "end_to_end": [...]}``. ``precision``: one or several of fp32/bf16/fp16;
    ``compile``: a bool, or modes (``"eager"``, ``"compiled"``); ``runtimes``: torch and/or
    onnx. ``backbone_chunk``, ``channels_last``: :class:`RegressionEngine`'s (None: its
    per-device default); ``crops``: also time the two crop paths (:func:`measure_crops`).
    ``images``: end to end per M and configuration at the largest batch
    (:func:`measure_pipeline`, with ``run_pipeline`` the real pipeline too)."""
    precisions = [precision] if isinstance(precision, str) else list(precision)
    modes = (["compiled" if compile else "eager"] if isinstance(compile, bool) else list(compile))
    for m in modes:
        if m not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {m!r}")
    for r in runtimes:
        if r not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {r!r}")
    combos = configurations(precisions, modes, runtimes)
    if not combos:
        raise ValueError("no configuration to measure: onnx runs fp32 and eager only")
    rows = []
    for b in batches:
        for m in rois:
            for prec, mode, rt in combos:
                kw = {"backbone": backbone, "num_rois": int(m), "batch": int(b), "device": device,
                      "precision": prec, "repeats": int(repeats), "body": body, "crops": bool(crops),
                      "backbone_chunk": backbone_chunk, "channels_last": channels_last,
                      "compile": mode == "compiled", "runtime": rt}
                rows.append(_child(kw) if fresh_process else measure_speed(**kw))
    for r in rows:  # M = 5 against M = 1 per person, same batch and configuration
        if r.get("num_rois") != 1 and "error" not in r:
            base = next((q for q in rows if q.get("num_rois") == 1 and "error" not in q and
                         all(q.get(k) == r.get(k) for k in ("batch", "precision", "mode", "runtime"))), None)
            if base is not None:
                r["cost_vs_m1"] = round(r["network"]["ms_per_person"] / base["network"]["ms_per_person"], 2)
    end_to_end = []
    if images:
        for m in rois:
            for prec, mode, rt in combos:
                end_to_end.append(measure_pipeline(images, backbone=backbone, num_rois=int(m), batch=int(max(batches)),
                                                   device=device, precision=prec, detector=detector, body=body,
                                                   backbone_chunk=backbone_chunk, channels_last=channels_last,
                                                   compile=mode == "compiled", runtime=rt, run_pipeline=run_pipeline))
    name = (torch.cuda.get_device_name(0) if device.startswith("cuda")
            else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    return {
        "benchmark": "hmrcli.speed_regressor/1", "device_name": name, "torch": torch.__version__,
        "note": "random weights; network = backbone over M crops + fusion + 3-iteration regressor; "
                "network+body adds the body model (posing the mesh); crops: the engine's two crop paths "
                "(ms per person, synthetic 1920x1080 images, 2 persons each); cost_vs_m1: ms per person "
                "against M = 1 in the same configuration; onnx: the same random network exported and run by "
                "onnxruntime (fp32). Best of --repeats. end_to_end: stages timed in sequence, and "
                "'pipeline' = the real pipeline from the image files to the files written."
                + ("" if fresh_process else " Measured in one process: peak_rss_mib is cumulative."),
        "paper_table3_fps_rtx3090_batch1": PAPER_TABLE3_FPS_RTX3090, "results": rows,
        "end_to_end": end_to_end,
    }
