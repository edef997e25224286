"""Batch inference: inputs -> persons -> engine (regress | fit, optional refine) -> files under ``--out``.

Output layout (schema ``hmrcli.result/1``), for an input filed under NAME (the file name,
or its path below a given folder, extension kept so ``a.jpg`` and ``a.png`` differ)::

    OUT/NAME/person_00.obj|.ply        mesh (metres; frame: see camera JSON "mesh")
    OUT/NAME/person_00.camera.json     camera + boxes + RoIs (hmrcli.camera/1)
    OUT/NAME/person_00.params.npz      body-model parameters
    OUT/NAME/overlay.png               with ``overlay``: all persons rendered over the photo
    OUT/NAME/result.json               written last: the image is done (hmrcli.result/1)
    OUT/errors.jsonl                   one line per failed input or person (file, stage, message)

XX in person_XX is the person's index among the image's detections; a person the engine
could not reconstruct (e.g. no landmarks found in its box) has no files, an errors.jsonl
line and an entry in result.json's "problems".

Every file is written atomically; an image whose ``result.json`` exists is skipped unless
``overwrite``. A failing image never stops the batch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hmrcli._version import __version__
from hmrcli.engine.regress import PersonBox, PersonEstimate
from hmrcli.export.writers import atomic_write_bytes, atomic_write_text, mesh_bytes, npz_bytes
from hmrcli.records import batch_exit_code
from hmrcli.sources import ImageReadError, ImageSource, read_image

__all__ = ["InferOptions", "InferSummary", "run_inference", "CAMERA_SCHEMA", "RESULT_SCHEMA", "camera_record"]

CAMERA_SCHEMA = "hmrcli.camera/1"
RESULT_SCHEMA = "hmrcli.result/1"

CAMERA_CONVENTION = (
    "OpenCV pinhole camera: x right, y down, z forward (metres); pixel = K (R X + t) / z with "
    "pixel (0,0) the centre of the top-left pixel. R, t map the body model's output (pose with "
    "global orientation, no translation) to the camera frame; R is the identity (the global "
    "orientation is already in the camera frame)."
)


@dataclass
class InferOptions:
    out: Path
    mesh_formats: tuple[str, ...] = ("obj",)
    mesh_frame: str = "camera"  # "camera" | "model"
    focal: float | None = None
    overwrite: bool = False
    checkpoint: str = ""
    images_per_step: int = 8
    max_persons: int | None = None  # with a detector: keep the N highest-scoring persons
    overlay: bool = False  # also write OUT/NAME/overlay.png (meshes rendered over the photo)


@dataclass
class InferSummary:
    images: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    persons: int = 0
    seconds: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: every image succeeded or was already done; 1: some failed; 2: all failed."""
        return batch_exit_code(self.failed, self.done + self.skipped)

    def to_json(self) -> dict[str, Any]:
        return {"schema": "hmrcli.summary/1", "images": self.images, "done": self.done, "skipped": self.skipped,
                "failed": self.failed, "persons": self.persons, "seconds": round(self.seconds, 3),
                "exit_code": self.exit_code}


def camera_record(est: PersonEstimate, index: int, image_path: str, engine: Any,
                  mesh_frame: str, focal_source: str) -> dict[str, Any]:
    """The ``hmrcli.camera/1`` record of one person (see docs/schemas)."""
    w, h = est.image_wh
    if mesh_frame == "camera":
        mesh_R, mesh_t = np.eye(3), np.zeros(3)
    else:
        mesh_R, mesh_t = np.eye(3), est.cam_t
    desc = engine.describe()
    rec = {
        "schema": CAMERA_SCHEMA,
        "image": {"path": image_path, "width": w, "height": h},
        "units": {"K": "pixels", "t": "metres", "boxes": "pixels"},
        "convention": CAMERA_CONVENTION,
        "K": est.K.tolist(),
        "R": np.eye(3).tolist(),
        "t": est.cam_t.tolist(),
        "focal_px": est.focal,
        "focal_source": focal_source,
        "mesh": {"frame": mesh_frame, "R": mesh_R.tolist(), "t": np.asarray(mesh_t).tolist(),
                 "note": "X_camera = mesh.R @ X_file + mesh.t for the vertices in the mesh files"},
        "person": {
            "index": index,
            "box_xyxy": np.asarray(est.box.xyxy).tolist(),
            "score": est.box.score,
            "box_source": est.box.source,
            "crop_box_cxcyb": np.asarray(est.crop_box).tolist(),
        },
        "rois": [
            {"box_cxcyb": np.asarray(est.rois[m]).tolist(), "cam_local": np.asarray(est.cams_local[m]).tolist(),
             "bbox_info": np.asarray(est.bbox_info[m]).tolist()}
            for m in range(len(est.rois))
        ],
        "roi_convention": desc.get("roi_convention"),
        "engine": engine.name,
        "aggregation": desc.get("aggregation"),
        "body_model": {"name": engine.body.info.name, "gender": engine.body.info.gender,
                       "betas_applied": est.betas_applied,
                       "betas_space": engine.betas_space},
        "hmrcli": __version__,
    }
    for key in ("regressor", "fit", "refine"):
        if key in desc:
            rec[key] = desc[key]
    details = {k: v for k, v in est.extra.items() if k != "engine"}
    if details:
        rec["estimate"] = details
    return rec


def _write_person(dirpath: Path, k: int, est: PersonEstimate, src: ImageSource, engine: Any,
                  opts: InferOptions) -> list[str]:
    stem = f"person_{k:02d}"
    files = []
    verts = est.vertices_model + est.cam_t if opts.mesh_frame == "camera" else est.vertices_model
    for fmt in opts.mesh_formats:
        atomic_write_bytes(dirpath / f"{stem}.{fmt}", mesh_bytes(verts, engine.body.faces, fmt))
        files.append(f"{stem}.{fmt}")
    import roma
    import torch

    aa = roma.rotmat_to_rotvec(torch.from_numpy(est.rotmats)).numpy()
    atomic_write_bytes(dirpath / f"{stem}.params.npz", npz_bytes(
        global_orient=aa[0], body_pose=aa[1:].reshape(-1), betas=est.betas, transl=est.cam_t,
        rotmats=est.rotmats, cam_local=est.cams_local, K=est.K,
        body_model=np.array(engine.body.info.name), betas_space=np.array(engine.betas_space),
        betas_applied=np.array(est.betas_applied),
    ))
    files.append(f"{stem}.params.npz")
    focal_source = "--focal" if opts.focal else "default sqrt(W^2 + H^2)"
    atomic_write_text(dirpath / f"{stem}.camera.json",
                      json.dumps(camera_record(est, k, str(src.path), engine, opts.mesh_frame, focal_source), indent=1))
    files.append(f"{stem}.camera.json")
    return files


def _write_overlay(dirpath: Path, image: np.ndarray, ests: list[PersonEstimate], faces: np.ndarray) -> str:
    """OUT/NAME/overlay.png: every person's mesh rendered over the image (camera frame)."""
    import cv2

    from hmrcli.render import render_overlay

    if ests:
        meshes = [(e.vertices_model + e.cam_t, faces) for e in ests]
        rgb = render_overlay(image, meshes, ests[0].K)
    else:
        rgb = image
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("PNG encoding of the overlay failed")
    atomic_write_bytes(dirpath / "overlay.png", buf.tobytes())
    return "overlay.png"


def _append_error(out: Path, rec: dict[str, str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(out / "errors.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)


def _legacy_items(sources: list[ImageSource], boxes: dict[str, list[dict[str, Any]]] | None):
    """Images with persons from a ``{path: persons}`` map, or the whole image as one person
    when ``boxes`` is None (what ``run_inference`` did before detectors)."""
    from hmrcli.detect import Detection, DetectedImage

    for src in sources:
        try:
            image = read_image(src.path)
        except ImageReadError as e:
            yield DetectedImage(src, None, 0, 0, [], ("read", str(e)))
            continue
        h, w = image.shape[:2]
        if boxes is None:
            dets = [Detection(np.array([0.0, 0.0, w - 1.0, h - 1.0]), None, "whole-image")]
        else:
            recs = boxes.get(str(src.path), boxes.get(os.path.abspath(src.path)))
            if recs is None:
                yield DetectedImage(src, image, w, h, [], ("boxes", f"{src.path}: no boxes given for this image"))
                continue
            dets = [Detection(np.asarray(r["box_xyxy"], dtype=np.float64), r.get("score"), r.get("detector", "boxes"))
                    for r in recs]
        yield DetectedImage(src, image, w, h, dets)


def run_inference(
    sources: list[ImageSource],
    engine: Any,
    opts: InferOptions,
    boxes: dict[str, list[dict[str, Any]]] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    detector: Any = None,
) -> InferSummary:
    """Run the engine over ``sources`` and write outputs. Persons come from ``detector``
    (a :class:`hmrcli.detect.base.Detector`, e.g. ``hmrcli.detect.create_detector("auto")``);
    without one, from ``boxes`` (image path -> person records of ``hmrcli.detections/1``);
    without either, each image is one person whose box is the whole image. ``progress``
    receives one event dict per finished image."""
    t0 = time.perf_counter()
    out = Path(opts.out)
    summ = InferSummary(images=len(sources))

    def fail(src: ImageSource, stage: str, msg: str) -> None:
        rec = {"file": str(src.path), "stage": stage, "message": msg}
        _append_error(out, rec)
        summ.failed += 1
        summ.errors.append(rec)
        if progress:
            progress({"event": "error", **rec})

    pending: list[tuple[ImageSource, dict[str, Any], list[PersonBox], np.ndarray | None]] = []

    def flush() -> None:
        if not pending:
            return
        try:
            results = engine.run([(p, persons) for _, p, persons, _ in pending])
        except Exception as e:  # network / fit failure: fail these images, keep going
            for src, _, _, _ in pending:
                fail(src, engine.name, f"{type(e).__name__}: {e}")
            pending.clear()
            return
        for (src, prep, _, image), ests in zip(pending, results):
            d = out / src.name
            problems = [why for why in prep.get("problems", []) if why]
            for why in problems:
                _append_error(out, {"file": str(src.path), "stage": "landmarks", "message": why})
                if progress:
                    progress({"event": "warning", "file": str(src.path), "stage": "landmarks", "message": why})
            try:
                files = []
                kept = [(k, est) for k, est in enumerate(ests) if est is not None]
                for k, est in kept:
                    files += _write_person(d, k, est, src, engine, opts)
                if opts.overlay and image is not None:
                    files.append(_write_overlay(d, image, [est for _, est in kept], engine.body.faces))
                atomic_write_text(d / "result.json", json.dumps({
                    "schema": RESULT_SCHEMA, "image": str(src.path), "persons": len(kept),
                    "person_indices": [k for k, _ in kept], "problems": problems, "files": files,
                    "engine": engine.name, "checkpoint": opts.checkpoint, "mesh_frame": opts.mesh_frame,
                    "hmrcli": __version__,
                }, indent=1))
            except Exception as e:
                fail(src, "write", f"{type(e).__name__}: {e}")
                continue
            summ.done += 1
            summ.persons += len(kept)
            if progress:
                progress({"event": "done", "file": str(src.path), "persons": len(kept), "out": str(d)})
        pending.clear()

    todo = []
    for src in sources:
        if (out / src.name / "result.json").is_file() and not opts.overwrite:
            summ.skipped += 1
            if progress:
                progress({"event": "skipped", "file": str(src.path)})
        else:
            todo.append(src)
    if detector is not None:
        from hmrcli.detect import detect_sources

        items = detect_sources(todo, detector, batch_size=opts.images_per_step, max_persons=opts.max_persons)
    else:
        items = _legacy_items(todo, boxes)
    for item in items:
        src = item.source
        if item.error is not None:
            fail(src, *item.error)
            continue
        persons = [PersonBox(np.asarray(d.box_xyxy, dtype=np.float64), d.score, d.detector) for d in item.detections]
        try:
            prepared = engine.prepare(item.image, persons, opts.focal)
        except Exception as e:
            fail(src, "crop", f"{type(e).__name__}: {e}")
            continue
        pending.append((src, prepared, persons, item.image if opts.overlay else None))
        if len(pending) >= opts.images_per_step or sum(len(p[2]) for p in pending) >= engine.batch_size:
            flush()
    flush()
    summ.seconds = time.perf_counter() - t0
    return summ
