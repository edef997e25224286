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
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from hmrcli.detect.base import Detection
from hmrcli.records import parse_detection_records, validate_person

__all__ = ["BoxesDetector", "BoxesError", "load_box_records", "coco_to_records", "sources_from_records"]

log = logging.getLogger(__name__)


class BoxesError(LookupError):
    """No usable boxes for an image (not in the file, ambiguous, or of another image size)."""


def coco_to_records(coco: dict[str, Any], name: str = "<coco>", category: str | int = "person") -> list[dict[str, Any]]:
    """COCO annotations -> ``hmrcli.detections/1`` records (one per image, in file order)."""
    if not isinstance(coco.get("images"), list) or not isinstance(coco.get("annotations"), list):
        raise ValueError(f"{name}: a COCO file needs 'images' and 'annotations' lists")
    cats = coco.get("categories") or []
    if isinstance(category, int) or (isinstance(category, str) and category.isdigit()):
        cat_ids = {int(category)}
    elif cats:
        cat_ids = {int(c["id"]) for c in cats if str(c.get("name", "")).lower() == str(category).lower()}
        if not cat_ids:
            names = ", ".join(sorted(str(c.get("name")) for c in cats)[:20])
            raise ValueError(f"{name}: no category named {category!r} (categories: {names})")
    else:
        cat_ids = {1}  # COCO's person id
    images: dict[Any, dict[str, Any]] = {}
    order = []
    for i, im in enumerate(coco["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise ValueError(f"{name}: images[{i}] needs 'id' and 'file_name'")
        rec = {"schema": "hmrcli.detections/1", "path": str(im["file_name"]),
               "width": int(im.get("width") or 0), "height": int(im.get("height") or 0), "persons": []}
        images[im["id"]] = rec
        order.append(rec)
    skipped = 0
    for i, ann in enumerate(coco["annotations"]):
        where = f"{name}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise ValueError(f"{where}: not an object")
        if int(ann.get("category_id", -1)) not in cat_ids or ann.get("iscrowd", 0):
            continue
        if ann.get("image_id") not in images:
            raise ValueError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if not (w > 0 and h > 0):
            skipped += 1  # COCO has a few empty boxes; they are no person to crop
            continue
        person = {"box_xyxy": [x, y, x + w, y + h], "score": ann.get("score"), "class": "person", "detector": "coco"}
        if "id" in ann:
            person["annotation_id"] = ann["id"]
        images[ann["image_id"]]["persons"].append(validate_person(person, where))
    if skipped:
        log.warning("%s: skipped %d person annotations with an empty box", name, skipped)
    for rec in order:
        _sort(rec["persons"])
    return order


def _sort(persons: list[dict[str, Any]]) -> None:
    persons.sort(key=lambda p: -p["score"] if p.get("score") is not None else float("inf"))  # stable


def load_box_records(source: str | os.PathLike | io.TextIOBase, category: str | int = "person") -> list[dict[str, Any]]:
    """Read a detections JSON-lines file or a COCO JSON (path, ``"-"`` for stdin, or a text
    stream) into ``hmrcli.detections/1`` records. Errors name the file (and line)."""
    import sys

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
        if isinstance(whole, dict) and ("annotations" in whole or "images" in whole):
            return coco_to_records(whole, name, category)
    records = parse_detection_records(text.splitlines(), name)
    for rec in records:
        _sort(rec["persons"])
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
                # the same path twice: the later record wins (like read_detections)
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


def sources_from_records(records: list[dict[str, Any]]) -> list[Any]:
    """``ImageSource``s for the images that records name, in order (duplicates once).
    Output names: relative paths as written; absolute paths below their common folder."""
    from hmrcli.export.writers import safe_relative_name
    from hmrcli.sources import ImageSource

    paths = list(dict.fromkeys(rec["path"] for rec in records))
    absolute = [p for p in paths if os.path.isabs(p)]
    base = None
    if len(absolute) > 1:
        base = os.path.commonpath([os.path.dirname(p) for p in absolute])
    elif absolute:
        base = os.path.dirname(absolute[0])
    out = []
    for p in paths:
        name = os.path.relpath(p, base) if (base is not None and os.path.isabs(p)) else p
        out.append(ImageSource(Path(p), safe_relative_name(name)))
    return out
