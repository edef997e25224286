"""Records passed between stages as JSON lines, with versioned schemas.

``hmrcli.detections/1`` (one line per image)::

    {"schema": "hmrcli.detections/1", "path": "photos/a.jpg", "width": 640, "height": 480,
     "persons": [{"box_xyxy": [x1, y1, x2, y2], "score": 0.98, "class": "person",
                  "detector": "mmdet:rtmdet"}]}

Boxes are full-image pixels (x right, y down, origin at the top-left corner of the
top-left pixel's centre, OpenCV convention); ``score`` in [0, 1] or null.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

__all__ = ["DETECTIONS_SCHEMA", "read_detections", "detection_record"]

DETECTIONS_SCHEMA = "hmrcli.detections/1"


def detection_record(path: str, width: int, height: int, boxes: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"schema": DETECTIONS_SCHEMA, "path": path, "width": width, "height": height, "persons": list(boxes)}


def read_detections(source: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """JSON lines of ``hmrcli.detections/1`` -> {path: persons}. Paths are matched both as
    written and resolved to absolute paths. Bad lines raise ValueError naming file and line."""
    out: dict[str, list[dict[str, Any]]] = {}
    src = Path(source)
    with open(src, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{src}:{n}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict) or "path" not in rec or "persons" not in rec:
                raise ValueError(f"{src}:{n}: expected a {DETECTIONS_SCHEMA} record with 'path' and 'persons'")
            schema = rec.get("schema", DETECTIONS_SCHEMA)
            if not str(schema).startswith("hmrcli.detections/"):
                raise ValueError(f"{src}:{n}: unsupported record schema {schema!r}")
            persons = []
            for p in rec["persons"]:
                box = np.asarray(p.get("box_xyxy"), dtype=np.float64)
                if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
                    raise ValueError(f"{src}:{n}: invalid box_xyxy {p.get('box_xyxy')!r}")
                persons.append({**p, "box_xyxy": box.tolist()})
            out[str(rec["path"])] = persons
            out[os.path.abspath(str(rec["path"]))] = persons
    return out
