"""Multi-RoI crops of detected persons as files, for inspection, training-data preparation
and debugging (``hmrcli crop``).

Per person the crop box, its M RoIs, the image -> crop affines and CLIFF's ``bbox_info`` are
computed exactly as the regression engine does (:mod:`hmrcli.geometry`), and written as::

    OUT/NAME/person_00.roi0.png ... person_00.roi{M-1}.png   the M crops (RGB, lossless)
    OUT/NAME/person_00.crops.json                            geometry (schema hmrcli.crops/1)
    OUT/errors.jsonl                                         one line per failed input

NAME is the image's output name (as for ``hmrcli infer``). Every file is written atomically;
files of an earlier run with more persons are not removed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from hmrcli import geometry as G
from hmrcli._version import __version__
from hmrcli.export.writers import atomic_write_bytes, atomic_write_text
from hmrcli.files import append_json_line
from hmrcli.records import (
    CROP_EVENT_SCHEMA,
    CROPS_SCHEMA,
    BatchSummary,
    error_record,
    source_fields,
)

__all__ = ["CROPS_SCHEMA", "CROP_EVENT_SCHEMA", "CropOptions", "CropSummary", "person_crops", "crop_record",
           "run_crops"]

CROP_CONVENTION = (
    "Boxes (cx, cy, b) in full-image pixels, pixel centres at integer coordinates (OpenCV). "
    "crop_box = box_from_xyxy(person.box_xyxy, aspect, box_rescale): b = max(w / aspect_ratio, h) * rescale "
    "(aspect_ratio 0.75 for rect, 1 for square). RoI m = (cx + dx_m b, cy + dy_m b, k_m b) with the fixed "
    "Multi-RoI layout. affine: 2x3 image -> crop pixels (cv2.warpAffine(image, affine, (width, height)), "
    "bilinear, zeros outside). bbox_info = [(cx - W/2) / f * 2.8, (cy - H/2) / f * 2.8, (b - 0.24 f) / (0.06 f)]."
)


@dataclass
class CropOptions:
    out: Path
    num_rois: int = 5
    aspect: str = "rect"  # "rect" (256x192) | "square" (224x224)
    rescale: float | None = None  # None: geometry.DEFAULT_RESCALE[aspect]
    focal: float | None = None  # None: sqrt(W^2 + H^2)


@dataclass
class CropSummary(BatchSummary):
    """Counts of ``hmrcli crop``: images done / failed, ``persons`` cropped, ``crops`` written."""

    command: ClassVar[str] = "crop"
    crops: int = 0

    def _extra_json(self) -> dict[str, Any]:
        return {"crops": self.crops}


def person_crops(image: np.ndarray, box_xyxy: Any, num_rois: int = 5, aspect: str = "rect",
                 rescale: float | None = None, focal: float | None = None) -> dict[str, Any]:
    """The M RoI crops of one person box (x1, y1, x2, y2), with their geometry.

    Returns crop_box (3,), rois (M, 3), affines (M, 2, 3), bbox_info (M, 3), crops
    (M, h, w, C) uint8 (the image's channels), crop_hw, focal, rescale."""
    h_img, w_img = image.shape[:2]
    if rescale is None:
        rescale = G.DEFAULT_RESCALE[aspect]
    f = float(focal) if focal else float(G.default_focal(w_img, h_img))
    crop_hw = G.crop_size(aspect)
    crop_box = G.box_from_xyxy(np.asarray(box_xyxy, dtype=np.float64), aspect=aspect, rescale=rescale)
    rois = G.make_rois(crop_box, num_rois)
    affines = G.crop_affine(rois, crop_hw)
    crops = np.stack([G.crop_image_np(image, affines[m], crop_hw) for m in range(len(rois))])
    info = G.bbox_info(rois, (w_img, h_img), f)
    return {"crop_box": crop_box, "rois": rois, "affines": affines, "bbox_info": info, "crops": crops,
            "crop_hw": crop_hw, "focal": f, "rescale": float(rescale)}


def crop_record(pc: dict[str, Any], index: int, image_path: str, image_wh: tuple[int, int],
                person: dict[str, Any], files: list[str], aspect: str, focal_source: str,
                source: Any = None) -> dict[str, Any]:
    """The ``hmrcli.crops/1`` JSON of one person (``pc`` from :func:`person_crops`);
    ``source`` (the ``ImageSource``) adds the image's output ``name`` (and video/frame)."""
    h, w = pc["crop_hw"]
    image = {"path": image_path, **(source_fields(source) if source is not None else {}),
             "width": int(image_wh[0]), "height": int(image_wh[1])}
    return {
        "schema": CROPS_SCHEMA,
        "image": image,
        "person": {"index": index, **person},
        "crop": {"aspect": aspect, "height": h, "width": w, "box_rescale": pc["rescale"], "num_rois": len(files)},
        "focal_px": pc["focal"],
        "focal_source": focal_source,
        "crop_box_cxcyb": np.asarray(pc["crop_box"]).tolist(),
        "rois": [{"index": m, "file": files[m], "box_cxcyb": pc["rois"][m].tolist(),
                  "affine": pc["affines"][m].tolist(), "bbox_info": pc["bbox_info"][m].tolist()}
                 for m in range(len(files))],
        "convention": CROP_CONVENTION,
        "hmrcli": __version__,
    }


def _png(rgb: np.ndarray) -> bytes:
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def _append_error(out: Path, rec: dict[str, str]) -> None:
    append_json_line(out / "errors.jsonl", rec)


def run_crops(detected: Iterable[Any], opts: CropOptions,
              progress: Callable[[dict[str, Any]], None] | None = None) -> CropSummary:
    """Write the crops of every person of ``detected`` (:class:`hmrcli.detect.DetectedImage`
    items, e.g. from :func:`hmrcli.detect.detect_sources`). A failing image never stops the
    batch; ``progress`` receives one event dict per image."""
    G.roi_layout(opts.num_rois)  # validates num_rois
    G.crop_size(opts.aspect)  # validates aspect
    t0 = time.perf_counter()
    out = Path(opts.out)
    summ = CropSummary()
    focal_source = "--focal" if opts.focal else "default sqrt(W^2 + H^2)"
    for item in detected:
        summ.images += 1
        src = item.source
        if item.error is not None:
            stage, msg = item.error
        else:
            d = out / src.name
            try:
                n = 0
                boxes = []
                for k, det in enumerate(item.detections):
                    pc = person_crops(item.image, det.box_xyxy, opts.num_rois, opts.aspect, opts.rescale, opts.focal)
                    stem = f"person_{k:02d}"
                    files = [f"{stem}.roi{m}.png" for m in range(opts.num_rois)]
                    for m, name in enumerate(files):
                        atomic_write_bytes(d / name, _png(pc["crops"][m]))
                    rec = crop_record(pc, k, str(src.path), (item.width, item.height), det.to_json(), files,
                                      opts.aspect, focal_source, source=src)
                    atomic_write_text(d / f"{stem}.crops.json", json.dumps(rec, indent=1))
                    boxes.append({**det.to_json(), "crops_json": f"{stem}.crops.json"})
                    n += 1
                summ.done += 1
                summ.persons += n
                summ.crops += n * opts.num_rois
                if progress:
                    progress({"schema": CROP_EVENT_SCHEMA, "event": "done", "file": str(src.path),
                              **source_fields(src), "width": int(item.width), "height": int(item.height),
                              "persons": n, "boxes": boxes, "out": str(d)})
                continue
            except OSError as e:
                stage, msg = "write", f"{d}: {e.strerror or e}"
            except Exception as e:
                stage, msg = "crop", f"{src.path}: {type(e).__name__}: {e}"
        rec = error_record(str(src.path), stage, msg)
        try:
            _append_error(out, rec)
        except OSError:
            pass
        summ.failed += 1
        summ.errors.append(rec)
        if progress:
            progress({"event": "error", **rec})
    summ.seconds = time.perf_counter() - t0
    return summ
