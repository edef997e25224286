"""The files of the output layout: one person's mesh, parameters and camera record, the overlay, stale-file removal, errors.jsonl."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import roma
import torch

from hmrcli._version import __version__
from hmrcli.engine.base import PersonEstimate
from hmrcli.export.writers import (
    atomic_write_bytes,
    atomic_write_text,
    mesh_bytes,
    npz_bytes,
)
from hmrcli.files import append_json_line
from hmrcli.pipeline.options import (
    CAMERA_CONVENTION,
    CAMERA_SCHEMA,
    ERRORS_NAME,
    InferOptions,
)
from hmrcli.render import quality_color, render_overlay
from hmrcli.sources import ImageSource

_OUR_FILE = re.compile(r"^(person_\d+\.(obj|ply|camera\.json|params\.npz)|overlay\.png|result\.json)$")
_OUR_TMP = re.compile(r"^\.(person_\d+\.(obj|ply|camera\.json|params\.npz)|overlay\.png|result\.json)\..+\.tmp$")


def _remove_stale(d: Path, keep: set[str]) -> None:
    """Remove layout files in ``d`` that ``keep`` does not list (persons of an older result)
    and leftover temp files of killed writes. Other files are left alone."""
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        if (_OUR_FILE.match(n) and n not in keep) or _OUR_TMP.match(n):
            try:
                os.unlink(d / n)
            except OSError:
                pass


def camera_record(est: PersonEstimate, index: int, image_path: str, engine: Any,
                  mesh_frame: str, focal_source: str) -> dict[str, Any]:
    """The ``hmrcli.camera/1`` record of one person (see docs/schemas). ``focal_source``:
    where K came from (``--intrinsics FILE (entry)``, ``--focal``, EXIF, default; plus the
    principal point's origin), also recorded as ``K_source``."""
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
        "K_source": focal_source,
        "principal_point_px": [float(est.K[0, 2]), float(est.K[1, 2])],
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
    if est.quality is not None:
        rec["quality"] = est.quality
    return rec


def _write_person(dirpath: Path, k: int, est: PersonEstimate, src: ImageSource, engine: Any,
                  opts: InferOptions, files: list[str], focal_source: str = "default sqrt(W^2 + H^2)") -> None:
    """Write one person's files atomically, appending each name to ``files`` once written."""
    stem = f"person_{k:02d}"
    verts = est.vertices_model + est.cam_t if opts.mesh_frame == "camera" else est.vertices_model
    for fmt in opts.mesh_formats:
        atomic_write_bytes(dirpath / f"{stem}.{fmt}", mesh_bytes(verts, engine.body.faces, fmt))
        files.append(f"{stem}.{fmt}")
    aa = roma.rotmat_to_rotvec(torch.from_numpy(est.rotmats)).numpy()
    atomic_write_bytes(dirpath / f"{stem}.params.npz", npz_bytes(
        global_orient=aa[0], body_pose=aa[1:].reshape(-1), betas=est.betas, transl=est.cam_t,
        rotmats=est.rotmats, cam_local=est.cams_local, K=est.K,
        body_model=np.array(engine.body.info.name), betas_space=np.array(engine.betas_space),
        betas_applied=np.array(est.betas_applied),
    ))
    files.append(f"{stem}.params.npz")
    atomic_write_text(dirpath / f"{stem}.camera.json",
                      json.dumps(camera_record(est, k, str(src.path), engine, opts.mesh_frame, focal_source), indent=1))
    files.append(f"{stem}.camera.json")


def _write_overlay(dirpath: Path, image: np.ndarray, ests: list[PersonEstimate], faces: np.ndarray,
                   by_quality: bool = False) -> str:
    """OUT/NAME/overlay.png: every person's mesh rendered over the image (camera frame);
    ``by_quality``: each coloured by its quality score (:func:`hmrcli.render.quality_color`)."""
    if ests:
        meshes = [(e.vertices_model + e.cam_t, faces) for e in ests]
        colors = [quality_color((e.quality or {}).get("score")) for e in ests] if by_quality else None
        rgb = render_overlay(image, meshes, ests[0].K, colors=colors)
    else:
        rgb = image
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("PNG encoding of the overlay failed")
    atomic_write_bytes(dirpath / "overlay.png", buf.tobytes())
    return "overlay.png"


def _append_error(out: Path, rec: dict[str, Any]) -> None:
    append_json_line(out / ERRORS_NAME, rec)
