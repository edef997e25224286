"""``boxes``: read person boxes instead of detecting them.

Two inputs are understood (recognised by content):

* JSON lines of ``hmrcli.detections/1`` (what ``hmrcli detect`` writes); boxes, scores,
  classes and detector names are passed through unchanged.
* A COCO-style annotations JSON (``{"images": [...], "annotations": [...], "categories": [...]}``):
  annotations of the person category (by name, default "person"; category id 1 when the file
  has no categories), crowd regions (``iscrowd``) skipped. ``bbox [x, y, w, h]`` becomes
  ``[x, y, x + w, y + h]`` (no half-pixel shift, as MMDetection reads COCO); ``score`` is
  kept when present (detection results), else null.

Images are matched to records by path: as written, as an absolute path, and otherwise by
the longest unique trailing part of the path (``val2017/0001.jpg`` matches a COCO
``file_name`` ``0001.jpg``). When a record gives the image size, it must match the image.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from hmrcli.detect.base import Detection
from hmrcli.records import (
    coco_to_records,
    is_coco_document,
    parse_detection_records,
    sort_persons,
)

__all__ = ["BoxesDetector", "BoxesError", "load_box_records", "coco_to_records"]

log = logging.getLogger(__name__)


class BoxesError(LookupError):
    """No usable boxes for an image (not in the file, ambiguous, or of another image size)."""


def load_box_records(source: str | os.PathLike | io.TextIOBase, category: str | int = "person") -> list[dict[str, Any]]:
    """Read a detections JSON-lines file or a COCO JSON (path, ``"-"`` for stdin, or a text
    stream) into ``hmrcli.detections/1`` records. Errors name the file (and line)."""
    if hasattr(source, "read"):
        name, text = getattr(source, "name", "<stream>"), source.read()
    elif str(source) == "-":
        name, text = "<stdin>", sys.stdin.read()
    else:
        name = str(source)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as e:
            raise FileNotFoundError(f"{name}: cannot read boxes ({e.strerror or e})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{name}: not a text file (expected JSON lines or a COCO JSON)") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        raise ValueError(f"{name}: a JSON list is not supported (COCO detection results lack file names); "
                         "give the annotations JSON (with 'images') or hmrcli.detections JSON lines")
    if stripped.startswith("{"):
        try:
            whole = json.loads(text)  # JSON lines with 2+ records fail fast here ("Extra data")
        except json.JSONDecodeError:
            whole = None
        if is_coco_document(whole):
            return coco_to_records(whole, name, category)
    records = parse_detection_records(text.splitlines(), name)
    for rec in records:
        sort_persons(rec["persons"])
    return records


class BoxesDetector:
    """Boxes from a file instead of a detector. ``detect`` needs the images' paths.

    Args:
        source: detections JSON lines or COCO JSON: a path, ``"-"`` (stdin) or a text stream.
        records: already loaded ``hmrcli.detections/1`` records (instead of ``source``).
        category: COCO category name or id to keep.
        score_thr: drop boxes whose score is below this (boxes without a score are kept);
            None keeps everything.
    """

    name = "boxes"
    one_person_per_image = False
    error_stage = "boxes"
    needs_paths = True
    needs_pixels = False  # only the image size: images may be tensors on a GPU (nvJPEG decoding)

    def __init__(self, source: str | os.PathLike | io.TextIOBase | None = None,
                 records: list[dict[str, Any]] | None = None, category: str | int = "person",
                 score_thr: float | None = None) -> None:
        if (source is None) == (records is None):
            raise ValueError("give the boxes as exactly one of source (a file, '-' for stdin) or records")
        self.source = ("<records>" if source is None else "<stdin>" if str(source) == "-"
                       else getattr(source, "name", str(source)))
        self.records = load_box_records(source, category) if records is None else list(records)
        self.score_thr = score_thr
        self._exact: dict[str, dict[str, Any] | None] = {}
        self._by_parts: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for rec in self.records:
            for key in {rec["path"], os.path.abspath(rec["path"])}:
                # the same path twice: the later record wins (as in sources_from_records)
                self._exact[key] = rec
            self._by_parts.setdefault(PurePath(rec["path"]).parts[-1:], []).append(rec)

    @property
    def paths(self) -> list[str]:
        """The image paths the records name, in file order."""
        return [rec["path"] for rec in self.records]

    def record_for(self, path: str | os.PathLike) -> dict[str, Any]:
        """The record of one image, or BoxesError saying why there is none."""
        p = str(path)
        for key in (p, os.path.abspath(p)):
            if key in self._exact:
                return self._exact[key]
        parts = PurePath(os.path.abspath(p)).parts
        cands = self._by_parts.get(parts[-1:], [])
        if not cands:
            raise BoxesError(f"{p}: no boxes for this image in {self.source}")
        # longest common trailing path wins, if unique
        def tail(rec):
            rp = PurePath(rec["path"]).parts
            n = 0
            while n < min(len(rp), len(parts)) and rp[-1 - n] == parts[-1 - n]:
                n += 1
            return n
        scored = sorted(((tail(r), r) for r in cands), key=lambda t: -t[0])
        if len(scored) > 1 and scored[0][0] == scored[1][0]:
            names = ", ".join(r["path"] for n, r in scored if n == scored[0][0])
            raise BoxesError(f"{p}: ambiguous, several records in {self.source} match it ({names})")
        return scored[0][1]

    def detections_for(self, path: str | os.PathLike, image_wh: tuple[int, int] | None = None) -> list[Detection]:
        rec = self.record_for(path)
        if image_wh is not None:
            w, h = (int(rec.get("width") or 0), int(rec.get("height") or 0))
            if w > 0 and h > 0 and (w, h) != tuple(int(v) for v in image_wh):
                raise BoxesError(f"{path}: the boxes in {self.source} are for a {w}x{h} image, "
                                 f"but this image is {image_wh[0]}x{image_wh[1]}")
        out = []
        for p in rec["persons"]:
            s = p.get("score")
            if self.score_thr is not None and s is not None and s < self.score_thr:
                continue
            out.append(Detection(np.asarray(p["box_xyxy"], dtype=np.float64), None if s is None else float(s),
                                 str(p.get("detector") or "boxes"), str(p.get("class") or "person")))
        return out

    def detect(self, images: list[np.ndarray], paths: list[str | os.PathLike] | None = None) -> list[list[Detection]]:
        if paths is None or len(paths) != len(images):
            raise ValueError("the boxes backend needs the path of every image (detect(images, paths=...))")
        return [self.detections_for(p, (img.shape[1], img.shape[0])) for img, p in zip(images, paths)]
