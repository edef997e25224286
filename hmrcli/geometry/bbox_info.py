"""CLIFF's box information, the extra regressor input (docs/method.md §3).

With an image of ``W x H`` pixels and focal length ``f`` (pixels)::

    bbox_info = [ (cx - W/2) / f * 2.8,  (cy - H/2) / f * 2.8,  (b - 0.24 f) / (0.06 f) ]

2.8, 0.24 and 0.06 are CLIFF's dataset statistics.  When the intrinsics are
unknown, CLIFF (and hmrcli) assume ``f = sqrt(W^2 + H^2)`` (the image
diagonal, i.e. a diagonal field of view of 2 atan(1/2) ~ 53 degrees) and the
principal point at the image centre ``(W/2, H/2)``.
"""

from __future__ import annotations

from ._array import Array, as_arrays, broadcast, check_last_dim, namespace

__all__ = ["BBOX_INFO_CONSTANTS", "bbox_info", "default_focal"]

#: (xy scale, size offset, size scale) of CLIFF's encoding.
BBOX_INFO_CONSTANTS = (2.8, 0.24, 0.06)


def default_focal(img_w: Array, img_h: Array) -> Array:
    """CLIFF's focal length guess ``sqrt(W^2 + H^2)`` in pixels (numpy/torch/float)."""
    if isinstance(img_w, (int, float)) and isinstance(img_h, (int, float)):
        return float(img_w * img_w + img_h * img_h) ** 0.5
    img_w, img_h = as_arrays(img_w, img_h)
    xp = namespace(img_w)
    return xp.sqrt(img_w * img_w + img_h * img_h)


def _focal(img_wh: Array, focal: Array | None) -> Array:
    if focal is None:
        return default_focal(img_wh[..., 0], img_wh[..., 1])
    return focal


def bbox_info(boxes: Array, img_wh: Array, focal: Array | None = None, principal: Array | None = None) -> Array:
    """CLIFF ``bbox_info`` of boxes ``(cx, cy, b)``.

    Args:
        boxes: (..., 3) boxes in full-image pixels.
        img_wh: (..., 2) image ``(W, H)`` in pixels; its leading dimensions
            broadcast against ``boxes[..., 0]`` (for (B, M, 3) RoIs pass (B, 1, 2)
            or a single (2,) size).
        focal: focal length in pixels, broadcastable to ``boxes[..., 0]``;
            ``None`` uses :func:`default_focal`.
        principal: (..., 2) principal point ``(cu, cv)`` in pixels (broadcast like
            ``img_wh``); ``None`` is the image centre. With a known principal point the
            first two entries are ``(cx - cu) / f * 2.8`` and ``(cy - cv) / f * 2.8``: the
            box's direction from the optical axis, which is what CLIFF encodes.
    Returns:
        (..., 3) encoded box information (dimensionless).
    """
    boxes, img_wh, focal, principal = as_arrays(boxes, img_wh, focal, principal)
    check_last_dim(boxes, 3, "boxes")
    check_last_dim(img_wh, 2, "img_wh")
    xp = namespace(boxes)
    f = _focal(img_wh, focal)
    k_xy, k_off, k_size = BBOX_INFO_CONSTANTS
    if principal is None:
        cu, cv = img_wh[..., 0] / 2.0, img_wh[..., 1] / 2.0
    else:
        check_last_dim(principal, 2, "principal")
        cu, cv = principal[..., 0], principal[..., 1]
    x = (boxes[..., 0] - cu) / f * k_xy
    y = (boxes[..., 1] - cv) / f * k_xy
    s = (boxes[..., 2] - k_off * f) / (k_size * f)
    return xp.stack(broadcast(x, y, s), -1)
