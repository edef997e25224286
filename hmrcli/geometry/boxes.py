"""Person boxes: conversions between corner boxes and ``(cx, cy, b)`` boxes.

Conventions (shared by the whole :mod:`hmrcli.geometry` package)
-----------------------------------------------------------------
* Units are full-image **pixels**.  Continuous image coordinates follow
  OpenCV: the centre of the pixel in row ``i`` and column ``j`` is at
  ``(x, y) = (j, i)``; x grows to the right, y grows downwards.
* A *person box* is ``B = (cx, cy, b)`` (last axis of size 3): the centre of
  the crop region and its size ``b``.

  - ``aspect="rect"`` (authors' code, CLIFF's released weights; crops of
    256 x 192, H x W): ``b`` is the **height** of the crop region, its width
    is ``0.75 * b``.
  - ``aspect="square"`` (paper, SPIN; crops of 224 x 224): ``b`` is the side.

* SPIN/CLIFF store ``scale = b / 200`` (:data:`PIXEL_STD`);
  :func:`box_to_center_scale` / :func:`center_scale_to_box` convert.
* A *corner box* ``xyxy = (x0, y0, x1, y1)`` is an axis-aligned rectangle in
  the same continuous coordinates (e.g. a detector output).

Every function accepts numpy arrays (or python sequences) and torch tensors
with any leading dimensions and returns the same kind (torch: same device and
floating dtype; numpy: float64 unless the input is already floating).
"""

from __future__ import annotations

import numpy as np

from ._array import Array, as_arrays, broadcast, check_last_dim, namespace

__all__ = [
    "BOX_ASPECTS",
    "DEFAULT_RESCALE",
    "PIXEL_STD",
    "box_aspect",
    "box_from_xyxy",
    "box_inside_fraction",
    "box_iou_xyxy",
    "box_to_center_scale",
    "box_wh",
    "center_scale_to_box",
    "cxcyb_to_xyxy",
    "cxcywh_to_xyxy",
    "xyxy_to_cxcyb",
    "xyxy_to_cxcywh",
]

#: SPIN/CLIFF's reference size: ``scale = b / PIXEL_STD``.
PIXEL_STD = 200.0

#: Width / height of the crop region for each box convention.
BOX_ASPECTS = {"rect": 0.75, "square": 1.0}

#: Default enlargement applied by :func:`box_from_xyxy`.
#: ``rect``: CLIFF's ``bbox_from_detector`` (``b = max(w * 256/192, h) * 1.1``).
#: ``square``: SPIN's rule for keypoint/OpenPose/annotation boxes
#: (``b = max(w, h) * 1.2``, SPIN ``bbox_from_openpose``/``bbox_from_json``;
#: the Multi-RoI code's ``bbox_conv_bboxXYHW_to_bbox_centerscale`` is the same).
#: docs/method.md §2 also notes CLIFF's 3DPW evaluation uses a 1.2 rescale of
#: the keypoint box.
DEFAULT_RESCALE = {"rect": 1.1, "square": 1.2}


def box_aspect(aspect: str) -> float:
    """Width/height ratio of the crop region for ``aspect`` ("rect" or "square")."""
    try:
        return BOX_ASPECTS[aspect]
    except KeyError:
        raise ValueError(f"aspect must be one of {sorted(BOX_ASPECTS)}, got {aspect!r}") from None


def xyxy_to_cxcywh(xyxy: Array) -> Array:
    """``(x0, y0, x1, y1)`` -> ``(cx, cy, w, h)`` (pixels, shape (..., 4))."""
    (xyxy,) = as_arrays(xyxy)
    check_last_dim(xyxy, 4, "xyxy")
    xp = namespace(xyxy)
    x0, y0, x1, y1 = xyxy[..., 0], xyxy[..., 1], xyxy[..., 2], xyxy[..., 3]
    return xp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


def cxcywh_to_xyxy(cxcywh: Array) -> Array:
    """``(cx, cy, w, h)`` -> ``(x0, y0, x1, y1)`` (pixels, shape (..., 4))."""
    (cxcywh,) = as_arrays(cxcywh)
    check_last_dim(cxcywh, 4, "cxcywh")
    xp = namespace(cxcywh)
    cx, cy, w, h = cxcywh[..., 0], cxcywh[..., 1], cxcywh[..., 2], cxcywh[..., 3]
    return xp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def box_from_xyxy(xyxy: Array, aspect: str = "rect", rescale: float | None = None) -> Array:
    """Person box ``(cx, cy, b)`` from a corner box (e.g. a detection).

    ``b = max(w / aspect_ratio, h) * rescale`` with the corner box's centre,
    i.e. the smallest region of the convention's aspect ratio containing the
    corner box, enlarged by ``rescale``:

    * ``aspect="rect"``: ``b = max(w * 256/192, h) * rescale`` (crop height),
      default ``rescale = 1.1`` (CLIFF ``bbox_from_detector``).
    * ``aspect="square"``: ``b = max(w, h) * rescale`` (side), default
      ``rescale = 1.2`` (SPIN's keypoint/annotation boxes).

    Args:
        xyxy: (..., 4) corner boxes in pixels.
        aspect: "rect" or "square".
        rescale: enlargement factor; ``None`` uses :data:`DEFAULT_RESCALE`.
    Returns:
        (..., 3) boxes ``(cx, cy, b)`` in pixels.
    """
    ratio = box_aspect(aspect)
    if rescale is None:
        rescale = DEFAULT_RESCALE[aspect]
    cxcywh = xyxy_to_cxcywh(xyxy)
    xp = namespace(cxcywh)
    b = xp.maximum(cxcywh[..., 2] / ratio, cxcywh[..., 3]) * rescale
    return xp.stack([cxcywh[..., 0], cxcywh[..., 1], b], -1)


def xyxy_to_cxcyb(xyxy: Array, aspect: str = "rect") -> Array:
    """Tight person box of the given aspect around a corner box (no enlargement).

    Same as ``box_from_xyxy(xyxy, aspect, rescale=1.0)``.  It inverts
    :func:`cxcyb_to_xyxy` exactly when the corner box has the convention's
    aspect ratio.
    """
    return box_from_xyxy(xyxy, aspect=aspect, rescale=1.0)


def box_wh(boxes: Array, aspect: str = "rect") -> Array:
    """Width and height ``(aspect_ratio * b, b)`` of the crop regions, (..., 2) pixels."""
    ratio = box_aspect(aspect)
    (boxes,) = as_arrays(boxes)
    check_last_dim(boxes, 3, "boxes")
    xp = namespace(boxes)
    b = boxes[..., 2]
    return xp.stack([b * ratio, b], -1)


def cxcyb_to_xyxy(boxes: Array, aspect: str = "rect") -> Array:
    """Corners ``(x0, y0, x1, y1)`` of the crop region of ``(cx, cy, b)`` boxes.

    The region is ``aspect_ratio * b`` wide and ``b`` high, centred on
    ``(cx, cy)`` (pixels).
    """
    wh = box_wh(boxes, aspect)
    (boxes,) = as_arrays(boxes)
    xp = namespace(boxes)
    return cxcywh_to_xyxy(xp.stack([boxes[..., 0], boxes[..., 1], wh[..., 0], wh[..., 1]], -1))


def box_to_center_scale(boxes: Array) -> tuple[Array, Array]:
    """``(cx, cy, b)`` -> ``(center (..., 2), scale (...))`` with ``scale = b / 200``."""
    (boxes,) = as_arrays(boxes)
    check_last_dim(boxes, 3, "boxes")
    return boxes[..., :2], boxes[..., 2] / PIXEL_STD


def center_scale_to_box(center: Array, scale: Array) -> Array:
    """``center (..., 2)``, ``scale (...)`` (SPIN/CLIFF) -> ``(cx, cy, b)`` with ``b = 200 scale``."""
    center, scale = as_arrays(center, scale)
    check_last_dim(center, 2, "center")
    xp = namespace(center)
    cx, cy, b = broadcast(center[..., 0], center[..., 1], scale * PIXEL_STD)
    return xp.stack([cx, cy, b], -1)


def _area_xyxy(b: np.ndarray) -> np.ndarray:
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def _intersection_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    return ix * iy


def box_iou_xyxy(a, b) -> np.ndarray:
    """Intersection over union of xyxy boxes (pixels), broadcasting ``a`` (..., 4) against
    ``b`` (..., 4); 0 for empty boxes. A float for two single boxes."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    inter = _intersection_xyxy(a, b)
    out = inter / np.maximum(_area_xyxy(a) + _area_xyxy(b) - inter, 1e-12)
    return float(out) if out.ndim == 0 else out


def box_inside_fraction(a, b) -> np.ndarray:
    """Fraction of box ``a``'s area that lies inside box ``b`` (xyxy, broadcasting)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = _intersection_xyxy(a, b) / np.maximum(_area_xyxy(a), 1e-12)
    return float(out) if out.ndim == 0 else out
