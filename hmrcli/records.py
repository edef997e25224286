"""Records passed between stages as JSON lines, with versioned schemas -- the one place
they are listed (``docs/records.md`` has the same table with examples).

Every record is a JSON object with ``"schema": "hmrcli.<name>/<version>"``. A version grows
only for incompatible changes; new optional fields can appear within a version, so readers
must ignore fields they do not know. Units: pixels for image coordinates (x right, y down,
pixel centres at integer coordinates: OpenCV), metres for 3D, radians for angles, seconds
for times.

==========================  ================================  =====================================================
schema                      written by / one per              fields (units)
==========================  ================================  =====================================================
``hmrcli.detections/1``     ``hmrcli detect`` (stdout or      ``path`` (image as given; a video frame is
                            ``--out``), one line per image    ``<video>#frame=<k>``), ``name`` (output name),
                                                              ``width``, ``height`` (px, after EXIF orientation),
                                                              ``detector``, ``persons`` [{``box_xyxy`` (px),
                                                              ``score`` ([0, 1] or null), ``class``,
                                                              ``detector``}] by decreasing score; video frames
                                                              add ``video`` (file) and ``frame`` (index from 0)
``hmrcli.crops/1``          ``hmrcli crop``: OUT/NAME/        ``image`` {``path``, ``name``, ``width``,
                            person_KK.crops.json, per person  ``height``}, ``person`` {``index``, ``box_xyxy``,
                                                              ``score``, ...}, ``crop`` {``aspect``, ``height``,
                                                              ``width`` (px), ``box_rescale``, ``num_rois``},
                                                              ``focal_px``, ``focal_source``, ``crop_box_cxcyb``
                                                              (px), ``rois`` [{``index``, ``file``,
                                                              ``box_cxcyb`` (px), ``affine`` (2x3, image -> crop
                                                              px), ``bbox_info``}], ``convention``, ``hmrcli``
``hmrcli.crop-event/1``     ``hmrcli crop --json`` stdout,    ``event`` "done", ``file`` (= path), ``name``,
                            one line per image done           ``width``, ``height`` (px), ``persons`` (count),
                                                              ``boxes`` [persons as in detections, plus
                                                              ``crops_json`` file name], ``out`` (folder)
``hmrcli.camera/1``         ``hmrcli infer``: OUT/NAME/       ``image`` {``path``, ``width``, ``height``}, ``K``
                            person_KK.camera.json             (px), ``R``, ``t`` (m), ``focal_px``, ``mesh``
                                                              {``frame``, ``R``, ``t``}, ``person`` {``index``,
                                                              ``box_xyxy``, ``score``, ``box_source``,
                                                              ``crop_box_cxcyb``}, ``rois``, ``engine``,
                                                              ``regressor`` | ``fit``, ``refine``,
                                                              ``body_model``, ``estimate``, ``quality`` (score
                                                              in [0, 1], flags, RoI spreads: docs/records.md),
                                                              ``hmrcli``
``hmrcli.result/1``         ``hmrcli infer``: OUT/NAME/       ``image`` (path), ``name``, ``persons`` (count),
                            result.json (written last)        ``person_indices``, ``problems``, ``quality``,
                                                              ``files``,
                                                              ``engine``, ``checkpoint``, ``mesh_frame``, ``hmrcli``
``hmrcli.manifest/1``       ``hmrcli infer``: OUT/            ``kind`` "run" (``settings``, ``settings_id``) or
                            manifest.jsonl (append-only)      "image" (``name``, ``settings_id``, ``files``)
``hmrcli.person/1``         ``hmrcli export``: NAME/          the camera record's fields plus ``params``
                            person_KK.json                    (axis-angle rad, betas, ``transl`` m), ``joints``
                                                              (m and px), ``units``, ``source``
``hmrcli.error/1``          OUT/errors.jsonl (infer, crop,    ``file``, ``stage`` ("read", "detect", "boxes",
                            export) and ``--json`` error      "crop", "regress", "fit", "landmarks", "quality", "write",
                                                              "export"), ``message``
                            events, one per failed input      (names the file); ``event`` "error" on stdout
``hmrcli.summary/1``        every batch command, last         ``command``, ``images``, ``done``, ``skipped``,
                            ``--json`` line                   ``failed``, ``persons``, ``seconds``, ``exit_code``
                                                              (infer adds ``remaining``, ``redone``,
                                                              ``below_quality``, ``flags``, ``interrupted``)
``hmrcli.doctor/1``         ``hmrcli doctor --json``          versions, devices, optional parts, models
==========================  ================================  =====================================================

Readers of inputs (``-`` / a ``.jsonl`` given as input, :func:`parse_input_text`) accept
``hmrcli.detections/*``, ``hmrcli.crop-event/*`` and ``hmrcli.crops/*`` lines (and one COCO
annotations JSON); summary lines and error events are skipped. Each image's record carries
its path and its person boxes, which then stand in for a detector.

``hmrcli.detections/1`` in full (one line per image)::

    {"schema": "hmrcli.detections/1", "path": "photos/a.jpg", "name": "a.jpg", "width": 640,
     "height": 480, "detector": "mmdet",
     "persons": [{"box_xyxy": [x1, y1, x2, y2], "score": 0.98, "class": "person",
                  "detector": "mmdet:rtmdet"}]}

Fields: ``path`` the image as given to the command (relative paths are relative to the
working directory of the command that wrote it); ``name`` (optional) the name its outputs are
filed under, so that a later stage files them alike; ``width``/``height`` the decoded image
size in pixels (after EXIF orientation); ``persons`` sorted by decreasing score, each with its
box in full-image pixels, ``score`` in [0, 1] or null (backend without scores, or boxes given
by hand), ``class`` and the ``detector`` that produced it. ``detector`` at the top level
(optional: older files lack it) names the backend that ran, also when it found nobody.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, ClassVar, Iterable

import numpy as np

__all__ = ["batch_exit_code", "DETECTIONS_SCHEMA", "CROPS_SCHEMA", "CROP_EVENT_SCHEMA", "ERROR_SCHEMA",
           "SUMMARY_SCHEMA", "read_detection_records", "parse_detection_records",
           "parse_input_text", "detection_record", "error_record", "source_fields", "validate_person",
           "coco_to_records", "is_coco_document", "sort_persons", "safe_relative_name", "BatchSummary"]

log = logging.getLogger(__name__)

DETECTIONS_SCHEMA = "hmrcli.detections/1"
CROPS_SCHEMA = "hmrcli.crops/1"
CROP_EVENT_SCHEMA = "hmrcli.crop-event/1"
ERROR_SCHEMA = "hmrcli.error/1"
SUMMARY_SCHEMA = "hmrcli.summary/1"


def source_fields(source: Any) -> dict[str, Any]:
    """The optional fields that identify an input in a record: ``name`` (output name) and,
    for a video frame, ``video`` and ``frame`` (``source``: an ``hmrcli.sources.ImageSource``)."""
    out: dict[str, Any] = {}
    name = getattr(source, "name", None)
    if name:
        out["name"] = str(name)
    if getattr(source, "video", None) is not None and getattr(source, "frame", None) is not None:
        out["video"] = str(source.video)
        out["frame"] = int(source.frame)
    return out


def detection_record(path: str, width: int, height: int, boxes: Iterable[dict[str, Any]],
                     detector: str | None = None, source: Any = None) -> dict[str, Any]:
    """One ``hmrcli.detections/1`` line. ``boxes``: person dicts (``Detection.to_json()``);
    ``source``: the ``ImageSource`` (adds ``name``, and ``video``/``frame`` for a frame)."""
    rec: dict[str, Any] = {"schema": DETECTIONS_SCHEMA, "path": path}
    if source is not None:
        rec.update(source_fields(source))
    rec.update({"width": int(width), "height": int(height)})
    if detector is not None:
        rec["detector"] = detector
    rec["persons"] = list(boxes)
    return rec


def error_record(file: str, stage: str, message: str) -> dict[str, Any]:
    """One ``hmrcli.error/1`` line (``errors.jsonl``): the input, the stage that failed
    ("read", "detect", "boxes", "crop", "regress", "write", ...) and a message naming the file."""
    return {"schema": ERROR_SCHEMA, "file": str(file), "stage": str(stage), "message": str(message)}


def validate_person(p: Any, where: str) -> dict[str, Any]:
    """Check one person entry (a dict with a finite, non-empty ``box_xyxy``); returns a copy
    with the box as a list of floats. Raises ValueError starting with ``where``."""
    if not isinstance(p, dict):
        raise ValueError(f"{where}: a person must be a JSON object, got {type(p).__name__}")
    try:
        box = np.asarray(p.get("box_xyxy"), dtype=np.float64)
    except (TypeError, ValueError):
        box = np.zeros(0)
    if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"{where}: invalid box_xyxy {p.get('box_xyxy')!r} (need [x1, y1, x2, y2] with x2 > x1, y2 > y1)")
    score = p.get("score")
    if score is not None and not isinstance(score, (int, float)):
        raise ValueError(f"{where}: score must be a number or null, got {score!r}")
    return {**p, "box_xyxy": box.tolist()}


def parse_detection_records(lines: Iterable[str], name: str = "<detections>") -> list[dict[str, Any]]:
    """Parse and validate ``hmrcli.detections/*`` JSON lines (blank lines skipped). Returns
    the records in order; a bad line raises ValueError naming ``name`` and the line number."""
    out: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}:{n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "path" not in rec or "persons" not in rec:
            raise ValueError(f"{name}:{n}: expected a {DETECTIONS_SCHEMA} record with 'path' and 'persons'")
        schema = rec.get("schema", DETECTIONS_SCHEMA)
        if not str(schema).startswith("hmrcli.detections/"):
            raise ValueError(f"{name}:{n}: unsupported record schema {schema!r}")
        if not isinstance(rec["persons"], list):
            raise ValueError(f"{name}:{n}: 'persons' must be a list")
        rec["persons"] = [validate_person(p, f"{name}:{n}") for p in rec["persons"]]
        rec["path"] = str(rec["path"])
        out.append(rec)
    return out


def _record_from_line(rec: dict[str, Any], where: str) -> dict[str, Any] | None:
    """A JSON-lines record of any stage -> an ``hmrcli.detections/1``-style record (path,
    size, persons, and name/video/frame when known), or None for lines that carry no input
    (summaries, error events). Raises ValueError starting with ``where``."""
    schema = str(rec.get("schema", DETECTIONS_SCHEMA if "persons" in rec and "path" in rec else ""))
    keep = {k: rec[k] for k in ("name", "video", "frame") if rec.get(k) is not None}
    if schema.startswith("hmrcli.detections/"):
        if "path" not in rec or not isinstance(rec.get("persons"), list):
            raise ValueError(f"{where}: a {DETECTIONS_SCHEMA} record needs 'path' and a 'persons' list")
        out = {**rec, "schema": DETECTIONS_SCHEMA, "path": str(rec["path"])}
        out["persons"] = [validate_person(p, where) for p in rec["persons"]]
        return out
    if schema.startswith("hmrcli.crop-event/"):
        if rec.get("event") != "done":
            return None
        if "file" not in rec or not isinstance(rec.get("boxes"), list):
            raise ValueError(f"{where}: a {CROP_EVENT_SCHEMA} line needs 'file' and a 'boxes' list")
        persons = [validate_person({k: v for k, v in p.items() if k != "crops_json"}, where) for p in rec["boxes"]]
        return {"schema": DETECTIONS_SCHEMA, "path": str(rec["file"]), **keep, "width": int(rec.get("width") or 0),
                "height": int(rec.get("height") or 0), "persons": persons}
    if schema.startswith("hmrcli.crops/"):
        img, person = rec.get("image"), rec.get("person")
        if not isinstance(img, dict) or "path" not in img or not isinstance(person, dict):
            raise ValueError(f"{where}: a {CROPS_SCHEMA} record needs 'image' with 'path' and 'person'")
        keep = {k: img[k] for k in ("name", "video", "frame") if img.get(k) is not None}
        p = validate_person({k: v for k, v in person.items()}, where)
        return {"schema": DETECTIONS_SCHEMA, "path": str(img["path"]), **keep, "width": int(img.get("width") or 0),
                "height": int(img.get("height") or 0), "persons": [p]}
    if schema.startswith(SUMMARY_SCHEMA.split("/")[0] + "/") or schema.startswith(ERROR_SCHEMA.split("/")[0] + "/") \
            or rec.get("event") in ("error", "skipped"):
        return None
    raise ValueError(f"{where}: unsupported record schema {schema or None!r} (expected hmrcli.detections, "
                     "hmrcli.crop-event or hmrcli.crops records)")


_BAD = re.compile(r"[\x00-\x1f<>:\"|?*\\]")


def safe_relative_name(rel: str | PurePath) -> str:
    """A relative output name that cannot leave the output folder: ``..``, absolute
    prefixes, control and reserved characters are replaced; non-ASCII letters are kept."""
    parts = []
    for p in PurePath(rel).parts:
        if p in ("", ".", "..", "/") or p.endswith(":\\"):
            continue
        p = unicodedata.normalize("NFC", _BAD.sub("_", p)).strip()
        if p in ("", ".", ".."):
            continue
        parts.append(p)
    if not parts:
        raise ValueError(f"cannot make an output name from {str(rel)!r}")
    return "/".join(parts)


def is_coco_document(obj: Any) -> bool:
    """THE rule for what a COCO annotations document is (boxes files, input lists): a JSON
    object with ``images`` or ``annotations``. :func:`coco_to_records` then requires both."""
    return isinstance(obj, dict) and ("annotations" in obj or "images" in obj)


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
        sort_persons(rec["persons"])
    return order


def sort_persons(persons: list[dict[str, Any]]) -> None:
    """Persons by descending score (persons without a score last, order kept)."""
    persons.sort(key=lambda p: -p["score"] if p.get("score") is not None else float("inf"))  # stable


def parse_input_text(text: str, name: str = "<stdin>") -> tuple[str, list[Any]]:
    """What an input list (stdin, a ``.jsonl`` given as input) holds:

    * ``("records", [record, ...])`` -- JSON lines of ``hmrcli.detections/*``,
      ``hmrcli.crop-event/*`` or ``hmrcli.crops/*`` (the latter grouped per image, persons in
      ``person.index`` order), normalised to ``hmrcli.detections/1`` records;
    * ``("coco", dict)`` -- one COCO annotations JSON (``images`` and ``annotations``);
    * ``("paths", [str, ...])`` -- one path per line (line ends stripped, blank lines
      skipped), or NUL-separated paths.

    Raises ValueError naming ``name`` and the line for bad JSON lines."""
    if "\x00" in text:
        return "paths", [p for p in text.split("\x00") if p.strip("\r\n")]
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        return "paths", [ln.rstrip("\r") for ln in text.split("\n") if ln.strip()]
    if stripped.startswith("["):
        raise ValueError(f"{name}: a JSON list is not an input list; give JSON lines (one record per line)")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if is_coco_document(whole):
        return "coco", whole
    out: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        where = f"{name}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        is_crops = str(rec.get("schema", "")).startswith("hmrcli.crops/")
        r = _record_from_line(rec, where)
        if r is None:
            continue
        if is_crops:  # one line per person: gather the image's persons
            r["persons"][0] = {**r["persons"][0], "_index": (rec.get("person") or {}).get("index", 0)}
            if r["path"] in index:
                out[index[r["path"]]]["persons"].extend(r["persons"])
                continue
        index[r["path"]] = len(out)
        out.append(r)
    for r in out:
        if any("_index" in p for p in r["persons"]):
            r["persons"].sort(key=lambda p: p.get("_index", 0))
            r["persons"] = [{k: v for k, v in p.items() if k not in ("_index", "index")} for p in r["persons"]]
    return "records", out


def _open_text(source: str | os.PathLike | io.TextIOBase):
    if isinstance(source, io.TextIOBase) or hasattr(source, "read"):
        return source, getattr(source, "name", "<stream>"), False
    if str(source) == "-":
        return sys.stdin, "<stdin>", False
    src = Path(source)
    try:
        return open(src, encoding="utf-8"), str(src), True
    except OSError as e:
        raise FileNotFoundError(f"{src}: cannot read detections ({e.strerror or e})") from None


def read_detection_records(source: str | os.PathLike | io.TextIOBase) -> list[dict[str, Any]]:
    """Whole ``hmrcli.detections/*`` records from a file, ``"-"`` (stdin) or a text stream."""
    f, name, close = _open_text(source)
    try:
        return parse_detection_records(f, name)
    finally:
        if close:
            f.close()


def batch_exit_code(failed: int, succeeded: int) -> int:
    """The documented exit status of a batch command: 0 nothing failed, 1 some inputs failed,
    2 every input failed."""
    if failed == 0:
        return 0
    return 2 if succeeded == 0 else 1


@dataclass
class BatchSummary:
    """The counts every batch command reports (``hmrcli.summary/1``): ``images`` given,
    ``done``, ``skipped``, ``failed`` (units of work: images, or persons and overlays for
    export), ``persons``, ``seconds``, and the error records (also in errors.jsonl). Commands
    add their own counts in subclasses (``_extra_json`` puts them into the JSON line)."""

    command: ClassVar[str] = ""
    images: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    persons: int = 0
    seconds: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0: nothing failed; 1: some failed; 2: all failed (:func:`batch_exit_code`)."""
        return batch_exit_code(self.failed, self.done + self.skipped)

    def _extra_json(self) -> dict[str, Any]:
        return {}

    def to_json(self) -> dict[str, Any]:
        return {"schema": SUMMARY_SCHEMA, "command": self.command, "images": self.images, "done": self.done,
                "skipped": self.skipped, "failed": self.failed, "persons": self.persons, **self._extra_json(),
                "seconds": round(self.seconds, 3), "exit_code": self.exit_code}
