"""Camera intrinsics given by the user: ``--intrinsics FILE`` and ``--principal-point CX,CY``.

Conventions: pixels, OpenCV pixel centres (pixel (0, 0) is the centre of the top-left pixel),
``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` mapping camera-frame points (x right, y down,
z forward, metres) to pixels. hmrcli's cameras have square pixels (one focal length ``f``):
a K with ``fx != fy`` is accepted when they differ by at most 1 % (``f = sqrt(fx fy)``, the
difference is recorded), and refused otherwise (resample the image to square pixels first).

The intrinsics file is JSON, one of::

    {"K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]}                       # every image
    {"images": {"photos/a.jpg": {"K": [[...]]}, "b.jpg": {"K": [[...]]}},
     "K": [[...]]}                                                      # per image (+ optional default)

An image's entry is looked up by the path as given on the command line, then by its absolute
path, then by its file name (only when that name is unique among the file's entries). An
image the file does not cover gets the file's default ``K``; when there is none, the image is
recorded as an error (stage ``camera``) rather than silently given another camera.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CameraIntrinsics", "IntrinsicsError", "IntrinsicsTable", "load_intrinsics", "parse_principal_point",
           "intrinsics_from_K"]

#: the largest relative difference between fx and fy accepted as square pixels
MAX_ASPECT_DIFF = 0.01


class IntrinsicsError(ValueError):
    """An intrinsics file or value that cannot be used (the message names the file and entry)."""


@dataclass(frozen=True)
class CameraIntrinsics:
    """The camera of one image. ``focal`` pixels (None: hmrcli's default sqrt(W^2 + H^2));
    ``principal`` (cu, cv) pixels (None: the image centre); ``source``: where they came from
    (recorded as ``K_source`` in the camera JSON)."""

    focal: float | None
    principal: tuple[float, float] | None
    source: str

    def K(self, width: int, height: int) -> np.ndarray:
        """The 3x3 matrix for an image of ``width x height`` pixels."""
        f = self.focal if self.focal else math.hypot(width, height)
        cu, cv = self.principal if self.principal is not None else (width / 2.0, height / 2.0)
        return np.array([[f, 0.0, cu], [0.0, f, cv], [0.0, 0.0, 1.0]])


def parse_principal_point(text: str) -> tuple[float, float]:
    """``"CX,CY"`` (pixels) -> (cx, cy)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        cx, cy = float(parts[0]), float(parts[1])
    except ValueError:
        raise IntrinsicsError(f"--principal-point must be CX,CY in pixels (e.g. 512.3,384.0), got {text!r}") from None
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise IntrinsicsError(f"--principal-point must be finite, got {text!r}")
    return cx, cy


def intrinsics_from_K(K: Any, where: str) -> tuple[float, tuple[float, float], str | None]:
    """Check a 3x3 K and return (f, (cx, cy), note). ``where`` names the file and entry in
    error messages; ``note`` says when fx and fy were merged."""
    try:
        k = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError):
        raise IntrinsicsError(f"{where}: K must be a 3x3 array of numbers") from None
    if k.shape != (3, 3):
        raise IntrinsicsError(f"{where}: K must be 3x3, got shape {list(k.shape)}")
    if not np.all(np.isfinite(k)):
        raise IntrinsicsError(f"{where}: K has non-finite entries")
    if abs(k[2, 2] - 1.0) > 1e-9 or abs(k[2, 0]) > 1e-12 or abs(k[2, 1]) > 1e-12:
        raise IntrinsicsError(f"{where}: K's last row must be [0, 0, 1], got {k[2].tolist()}")
    if abs(k[1, 0]) > 1e-12 or abs(k[0, 1]) > 1e-9 * max(1.0, abs(k[0, 0])):
        raise IntrinsicsError(f"{where}: K has skew or a rotated layout ({k[:2, :2].tolist()}); hmrcli's cameras have none")
    fx, fy = float(k[0, 0]), float(k[1, 1])
    if fx <= 0 or fy <= 0:
        raise IntrinsicsError(f"{where}: focal lengths must be positive pixels, got fx={fx}, fy={fy}")
    note = None
    if abs(fx - fy) > MAX_ASPECT_DIFF * max(fx, fy):
        raise IntrinsicsError(f"{where}: fx={fx} and fy={fy} differ by more than {MAX_ASPECT_DIFF:.0%}: "
                              "hmrcli needs square pixels (resample the image so that fx == fy)")
    f = math.sqrt(fx * fy)
    if fx != fy:
        note = f"fx={fx:g}, fy={fy:g} merged to f=sqrt(fx*fy)={f:.4f}"
    return f, (float(k[0, 2]), float(k[1, 2])), note


@dataclass
class IntrinsicsTable:
    """A loaded intrinsics file: per-image entries and an optional default."""

    path: str
    default: tuple[float, tuple[float, float], str | None] | None
    by_key: dict[str, tuple[float, tuple[float, float], str | None]]
    by_name: dict[str, tuple[float, tuple[float, float], str | None] | None]  # None: ambiguous name
    digest: str

    def lookup(self, image_path: str | os.PathLike) -> CameraIntrinsics:
        """The camera of one image (see the module docstring for the lookup order).
        Raises IntrinsicsError when the file covers neither the image nor all images."""
        p = str(image_path)
        hit, how = None, ""
        for key in (p, os.path.abspath(p)):
            if key in self.by_key:
                hit, how = self.by_key[key], key
                break
        if hit is None:
            name = os.path.basename(p)
            if name in self.by_name:
                hit = self.by_name[name]
                if hit is None:
                    raise IntrinsicsError(f"{self.path}: several entries are named {name!r}; key {p!r} by its path")
                how = name
        if hit is None:
            if self.default is None:
                raise IntrinsicsError(f"{self.path}: no K for {p} (no entry under 'images' and no default 'K')")
            hit, how = self.default, "default K"
        f, c, note = hit
        src = f"--intrinsics {self.path} ({how})" + (f"; {note}" if note else "")
        return CameraIntrinsics(f, c, src)


def load_intrinsics(path: str | os.PathLike) -> IntrinsicsTable:
    """Read and check an intrinsics JSON file (format in the module docstring)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise IntrinsicsError(f"{p}: cannot read the intrinsics file ({e.strerror or e})") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntrinsicsError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not ({"K", "images"} & set(data)):
        raise IntrinsicsError(f"{p}: expected an object with 'K' (all images) and/or 'images' (per image), "
                              'e.g. {"K": [[1000, 0, 640], [0, 1000, 360], [0, 0, 1]]}')
    default = intrinsics_from_K(data["K"], f"{p}: K") if "K" in data else None
    by_key: dict[str, Any] = {}
    by_name: dict[str, Any] = {}
    images = data.get("images", {})
    if not isinstance(images, dict):
        raise IntrinsicsError(f"{p}: 'images' must be an object mapping image paths to {{\"K\": ...}}")
    for key, entry in images.items():
        if not isinstance(entry, dict) or "K" not in entry:
            raise IntrinsicsError(f"{p}: images[{key!r}] must be an object with 'K'")
        val = intrinsics_from_K(entry["K"], f"{p}: images[{key!r}].K")
        by_key[key] = val
        by_key.setdefault(os.path.abspath(os.path.join(p.parent, key)) if not os.path.isabs(key) else key, val)
        name = os.path.basename(key)
        by_name[name] = None if name in by_name else val
    return IntrinsicsTable(str(p), default, by_key, by_name, hashlib.sha256(raw).hexdigest()[:16])
