"""Regressor speed: persons/s and ms/person for M RoIs (the analogue of the Multi-RoI
paper's Table 3), network alone (crops already prepared) and network + body model.

Random weights (speed does not depend on their values); best of ``repeats`` timed runs
after one warm-up. ``fresh_process=True`` measures each configuration in a new Python
process so that its peak resident memory is its own.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hmrcli.body import load_body_model
from hmrcli.detect import create_detector, detect_images
from hmrcli.detect.base import DetectorUnavailable
from hmrcli.engine.regress import PersonBox, RegressionEngine
from hmrcli.nn.checkpoints import RegressorConfig, build_model
from hmrcli.sources import read_image

__all__ = ["PAPER_TABLE3_FPS_RTX3090", "measure_crops", "measure_speed", "measure_pipeline", "speed_report"]

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
                  channels_last: bool | None = None, compile: bool = False, crops: bool = True) -> dict[str, Any]:
    """One configuration in this process -> timings (ms/person, persons/s) and peak memory (MiB).
    The network runs as :meth:`RegressionEngine.forward_network` (the engine's precision,
    memory format, backbone chunking, compilation: ``settings`` in the result; None: the
    engine's per-device defaults) on random 0..255 crops; ``crops``: also time the two crop
    paths (:func:`measure_crops`, before the network so that peak memory stays the network's
    plus the images')."""
    torch.manual_seed(0)
    cfg = RegressorConfig(arch="multiroi", backbone=backbone, num_rois=num_rois)
    model = build_model(cfg).eval()
    model.config = cfg
    bm = load_body_model(body)
    crop_times = measure_crops(model, bm, batch, device, repeats) if crops else None
    engine = RegressionEngine(model, bm, device=device, precision=precision, batch_size=batch,
                              backbone_chunk=backbone_chunk, channels_last=channels_last, compile=compile)
    x = torch.rand(batch, num_rois, 3, *cfg.crop_hw, device=device) * 255
    info = torch.randn(batch, num_rois, 3, device=device) * 0.3
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

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
    out = {"backbone": backbone, "num_rois": num_rois, "batch": batch, "device": device, "precision": engine.precision,
           "body_model": body, **res, "settings": settings, "peak_rss_mib": round(peak, 1)}
    if crop_times is not None:
        out["crops"] = crop_times
    if device.startswith("cuda"):
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def measure_pipeline(images: Sequence[str], backbone: str = "resnet50", num_rois: int = 5, batch: int = 16,
                     device: str = "cpu", precision: str = "fp32", detector: str = "auto",
                     body: str = "free", backbone_chunk: int | None = None, channels_last: bool | None = None,
                     compile: bool = False) -> dict[str, Any]:
    """End to end over real image files: decode -> detect -> crop (RoIs) -> network + body
    model, each stage timed (seconds in total, ms per image / per person). One pass after a
    warm-up on the first image; random regressor weights. "crop" is ``engine.prepare``: on
    CUDA the engine cuts the crops on the device in ``run`` (its torch crop path), so there
    "crop" holds the RoI geometry and "network+body" the crops."""
    torch.manual_seed(0)
    cfg = RegressorConfig(arch="multiroi", backbone=backbone, num_rois=num_rois)
    model = build_model(cfg).eval()
    model.config = cfg
    engine = RegressionEngine(model, load_body_model(body), device=device, precision=precision, batch_size=batch,
                              backbone_chunk=backbone_chunk, channels_last=channels_last, compile=compile)
    try:
        det = create_detector(detector)
    except DetectorUnavailable:
        det = create_detector("whole-image")
    stage = {"decode": 0.0, "detect": 0.0, "crop": 0.0, "network+body": 0.0}
    persons = 0

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
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if timed:
            stage["network+body"] += time.perf_counter() - t4
        return n

    one_pass(list(images)[:1], timed=False)  # warm-up
    persons = one_pass(list(images), timed=True)
    total = sum(stage.values())
    n_img = len(images)
    return {
        "detector": det.name, "images": n_img, "persons": persons, "num_rois": num_rois, "batch": batch,
        "settings": engine.settings(),
        "seconds": {k: round(v, 4) for k, v in stage.items()},
        "ms_per_image": round(1000 * total / max(n_img, 1), 2),
        "ms_per_person": round(1000 * total / max(persons, 1), 2) if persons else None,
        "persons_per_s": round(persons / total, 2) if total > 0 else None,
    }


def _child(kwargs: dict[str, Any]) -> dict[str, Any]:
    code = "import json,sys;from hmrcli.bench.speed import measure_speed;print(json.dumps(measure_speed(**json.loads(sys.argv[1]))))"
    r = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True)
    if r.returncode != 0:
        return {"num_rois": kwargs["num_rois"], "batch": kwargs["batch"], "error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def speed_report(backbone: str = "resnet50", rois: Sequence[int] = (1, 2, 3, 4, 5), batches: Sequence[int] = (1, 16),
                 device: str = "cpu", precision: str = "fp32", repeats: int = 3, body: str = "free",
                 fresh_process: bool = True, images: Sequence[str] | None = None,
                 detector: str = "auto", backbone_chunk: int | None = None, channels_last: bool | None = None,
                 compile: bool = False, crops: bool = True) -> dict[str, Any]:
    """Every (batch, M) configuration -> ``{"benchmark", "device_name", "torch", "note",
    "paper_table3_fps_rtx3090_batch1", "results": [...]}`` (the speed_regressor.py JSON).
    ``backbone_chunk``, ``channels_last``, ``compile``: :class:`RegressionEngine`'s (None: its
    per-device default); ``crops``: also time the two crop paths (:func:`measure_crops`)."""
    rows = []
    knobs = {"backbone_chunk": backbone_chunk, "channels_last": channels_last, "compile": bool(compile)}
    for b in batches:
        for m in rois:
            kw = {"backbone": backbone, "num_rois": int(m), "batch": int(b), "device": device,
                  "precision": precision, "repeats": int(repeats), "body": body, "crops": bool(crops), **knobs}
            rows.append(_child(kw) if fresh_process else measure_speed(**kw))
    end_to_end = []
    if images:
        for m in rois:
            end_to_end.append(measure_pipeline(images, backbone=backbone, num_rois=int(m), batch=int(max(batches)),
                                               device=device, precision=precision, detector=detector, body=body,
                                               **knobs))
    name = (torch.cuda.get_device_name(0) if device.startswith("cuda")
            else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    return {
        "benchmark": "hmrcli.speed_regressor/1", "device_name": name, "torch": torch.__version__,
        "note": "random weights; network = backbone over M crops + fusion + 3-iteration regressor; "
                "network+body adds the body model (posing the mesh); crops: the engine's two crop paths "
                "(ms per person, synthetic 1920x1080 images, 2 persons each). Best of --repeats."
                + ("" if fresh_process else " Measured in one process: peak_rss_mib is cumulative."),
        "paper_table3_fps_rtx3090_batch1": PAPER_TABLE3_FPS_RTX3090, "results": rows,
        "end_to_end": end_to_end,
    }
