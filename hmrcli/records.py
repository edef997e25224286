"""Records passed between stages as JSON lines, with versioned schemas.

``hmrcli.detections/1`` (one line per image, written by ``hmrcli detect``)::

    {"schema": "hmrcli.detections/1", "path": "photos/a.jpg", "width": 640, "height": 480,
     "detector": "mmdet",
     "persons": [{"box_xyxy": [x1, y1, x2, y2], "score": 0.98, "class": "person",
                  "detector": "mmdet:rtmdet"}]}

Fields: ``path`` the image as given to the command (relative paths are relative to the
working directory of the command that wrote it); ``width``/``height`` the decoded image size
in pixels (after EXIF orientation); ``persons`` sorted by decreasing score, each with its box
in full-image pixels (x right, y down, pixel centres at integer coordinates: OpenCV
convention), ``score`` in [0, 1] or null (backend without scores, or boxes given by hand),
``class`` and the ``detector`` that produced it. ``detector`` at the top level (optional:
older files lack it) names the backend that ran, also when it found nobody. Readers must
ignore fields they do not know.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np

__all__ = ["batch_exit_code", "DETECTIONS_SCHEMA", "read_detections", "read_detection_records", "parse_detection_records",
           "detection_record", "validate_person"]

DETECTIONS_SCHEMA = "hmrcli.detections/1"


def detection_record(path: str, width: int, height: int, boxes: Iterable[dict[str, Any]],
                     detector: str | None = None) -> dict[str, Any]:
    """One ``hmrcli.detections/1`` line. ``boxes``: person dicts (``Detection.to_json()``)."""
    rec: dict[str, Any] = {"schema": DETECTIONS_SCHEMA, "path": path, "width": int(width), "height": int(height)}
    if detector is not None:
        rec["detector"] = detector
    rec["persons"] = list(boxes)
    return rec


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


def read_detections(source: str | os.PathLike | io.TextIOBase) -> dict[str, list[dict[str, Any]]]:
    """JSON lines of ``hmrcli.detections/1`` -> {path: persons}. Paths are matched both as
    written and resolved to absolute paths. Bad lines raise ValueError naming file and line."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in read_detection_records(source):
        out[rec["path"]] = rec["persons"]
        out[os.path.abspath(rec["path"])] = rec["persons"]
    return out


def batch_exit_code(failed: int, succeeded: int) -> int:
    """The documented exit status of a batch command: 0 nothing failed, 1 some inputs failed,
    2 every input failed."""
    if failed == 0:
        return 0
    return 2 if succeeded == 0 else 1
