r"""Cameras: local weak-perspective crop cameras, the full perspective camera,
projection, and the Multi-RoI camera-consistency terms (docs/method.md §4).

Frames and units
----------------
* Camera frame as OpenCV: x right, y down, z forward (metres).  Rotation is
  the identity for the full camera (the body's global orientation carries the
  rotation).
* Image coordinates in pixels, OpenCV pixel-centre convention (see
  :mod:`.crops`).  Intrinsics ``K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]]``
  (CLIFF: principal point at the image centre; default ``f = sqrt(W^2+H^2)``).
* A *local camera* ``cam = (s, tx, ty)`` of a RoI ``B = (cx, cy, b)`` projects a
  body point ``X`` (metres, relative to the body root) to *normalised crop
  coordinates* ``x_n = s (X_x + tx)``, ``y_n = s (X_y + ty)``, where a
  full-image pixel ``(u, v)`` has normalised coordinates
  ``((u - cx) / (b/2), (v - cy) / (b/2))`` (:func:`image_to_normalized`).
  With "rect" boxes (``b`` = crop height) the crop spans ``x_n`` in
  ``[-0.75, 0.75]`` and ``y_n`` in ``[-1, 1]``.
* The *full camera* is the translation ``t_full = (tX, tY, tZ)`` (metres) of the
  body root in the camera frame.  CLIFF's conversion, with ``bs = b s``::

      t_full = ( tx + 2 (cx - W/2) / bs,  ty + 2 (cy - H/2) / bs,  2 f / bs )

  (:func:`local_to_full`, exact inverse :func:`full_to_local`).  Like CLIFF's
  ``cam_crop2full``, ``bs`` gets ``+ eps`` (default 1e-9) against division by 0.

Weak-perspective error bound (local camera vs. full perspective camera)
-----------------------------------------------------------------------
Take a body point ``P = t_full + X`` (``X`` relative to the root).  Its
perspective projection is ``p = c + f (X_xy + t_xy) / (tZ + X_z)`` with
``c = (W/2, H/2)``.  Substituting the local camera of *any* box
(``s = 2f / (b tZ)``, ``t_loc = t_xy - (c_box - c) tZ / f``) into
``q = c_box + (b/2) s (X_xy + t_loc)`` gives ``q = c + f (X_xy + t_xy) / tZ``:
the local camera is a scaled orthographic projection about the *optical
axis* at the root depth ``tZ``, whatever the box.  Hence, exactly::

    q - p = (p - c) * X_z / tZ = (q - c) * X_z / (tZ + X_z)

and for a body whose points satisfy ``|X_z| <= d`` (half depth extent)::

    |q - p| <= |p - c| * d / tZ <= |q - c| * d / (tZ - d)      [full-image px]

per axis and in Euclidean norm.  In crop pixels multiply by ``k = h / b``
(crop height over box size).  In 3D terms, for points within radius ``r`` of
the root (``d <= r``), ``|p - c| <= f (|t_xy| + r) / (tZ - r)``, so
``|q - p| <= f r (|t_xy| + r) / (tZ (tZ - r))``.

Consequences: the error is zero on the optical axis' depth plane and grows
with the distance of the *projection from the principal point*, not from the
box centre.  For a fixed lateral root offset ``t_xy`` (metres) it shrinks like
``1/tZ^2`` in image pixels and like ``1/tZ`` in crop pixels (the box shrinks as
``1/tZ``).  For a body seen at a fixed off-axis angle ``theta`` it does **not**
vanish with distance in crop pixels: relative to the body's image size it
tends to ``tan(theta) * d / (body extent)`` (the perspective shear of an
off-axis object), which is why CLIFF/Multi-RoI supervise 2D keypoints through
the full perspective camera.
"""

from __future__ import annotations

from typing import NamedTuple

from ._array import Array, as_arrays, broadcast, check_last_dim, namespace
from .bbox_info import default_focal

__all__ = [
    "CLIFF_EPS",
    "CODE_SCALE_WEIGHT",
    "PAPER_CONSISTENCY_WEIGHTS",
    "ConsistencyResiduals",
    "consistency_loss",
    "consistency_residuals",
    "full_to_local",
    "image_to_normalized",
    "intrinsics",
    "local_to_full",
    "normalized_to_image",
    "project",
    "weak_perspective_project",
]

#: Added to ``b * s`` before dividing (CLIFF ``cam_crop2full``, Multi-RoI ``camera_losses``).
CLIFF_EPS = 1e-9
#: Paper Eq. 13/16 weights ``(lambda_x, lambda_y, lambda_s)`` of the squared residuals.
PAPER_CONSISTENCY_WEIGHTS = (0.1, 0.1, 1e-4)
#: The authors' code multiplies the scale residual by this *before* squaring.
CODE_SCALE_WEIGHT = 1e-4


def _focal(img_wh: Array, focal: Array | None) -> Array:
    if focal is None:
        return default_focal(img_wh[..., 0], img_wh[..., 1])
    return focal


def _centre(img_wh: Array, principal: Array | None) -> tuple[Array, Array]:
    """The principal point ``(cu, cv)`` in pixels: ``principal[..., 0/1]`` when given, else
    the image centre ``(W/2, H/2)``."""
    if principal is None:
        return img_wh[..., 0] / 2.0, img_wh[..., 1] / 2.0
    return principal[..., 0], principal[..., 1]


def intrinsics(focal: Array, img_w: Array, img_h: Array, principal: Array | None = None) -> Array:
    """Pinhole intrinsics ``[[f, 0, cu], [0, f, cv], [0, 0, 1]]``, shape (..., 3, 3).

    ``focal``, ``img_w``, ``img_h`` (pixels) broadcast together; ``principal`` (..., 2)
    pixels is the principal point ``(cu, cv)`` (default the image centre ``(W/2, H/2)``);
    numpy or torch (device/dtype follow the first floating tensor).
    """
    focal, img_w, img_h, principal = as_arrays(focal, img_w, img_h, principal)
    xp = namespace(focal)
    if principal is None:
        cu0, cv0 = img_w / 2.0, img_h / 2.0
    else:
        check_last_dim(principal, 2, "principal")
        cu0, cv0 = principal[..., 0] + img_w * 0, principal[..., 1] + img_h * 0
    f, cu, cv = broadcast(focal, cu0, cv0)
    z, o = f * 0, f * 0 + 1
    return xp.stack([xp.stack([f, z, cu], -1), xp.stack([z, f, cv], -1), xp.stack([z, z, o], -1)], -2)


def local_to_full(
    cam: Array,
    boxes: Array,
    img_wh: Array,
    focal: Array | None = None,
    eps: float = CLIFF_EPS,
    principal: Array | None = None,
) -> Array:
    """Local crop camera ``(s, tx, ty)`` -> full-camera translation ``(tX, tY, tZ)``.

    Args:
        cam: (..., 3) local weak-perspective cameras (dimensionless scale, metres).
        boxes: (..., 3) boxes ``(cx, cy, b)`` of the crops the cameras belong to (pixels).
        img_wh: (..., 2) image size ``(W, H)`` in pixels, broadcastable
            against ``cam[..., 0]`` (e.g. (B, 1, 2) for (B, M, 3) cameras).
        focal: focal length in pixels broadcastable to ``cam[..., 0]``;
            ``None`` uses ``sqrt(W^2 + H^2)``.
        eps: added to ``b s`` (CLIFF's 1e-9).
        principal: (..., 2) principal point ``(cu, cv)`` in pixels, broadcastable like
            ``img_wh``; ``None`` is the image centre ``(W/2, H/2)`` (CLIFF's assumption).
            With a principal point ``c`` the conversion reads ``tX = tx + 2 (cx - cu) / bs``.
    Returns:
        (..., 3) translation of the body root in the camera frame (metres).
    """
    cam, boxes, img_wh, focal, principal = as_arrays(cam, boxes, img_wh, focal, principal)
    check_last_dim(cam, 3, "cam")
    check_last_dim(boxes, 3, "boxes")
    check_last_dim(img_wh, 2, "img_wh")
    xp = namespace(cam)
    f = _focal(img_wh, focal)
    cu, cv = _centre(img_wh, principal)
    bs = boxes[..., 2] * cam[..., 0] + eps
    tx = cam[..., 1] + 2.0 * (boxes[..., 0] - cu) / bs
    ty = cam[..., 2] + 2.0 * (boxes[..., 1] - cv) / bs
    tz = 2.0 * f / bs
    return xp.stack(broadcast(tx, ty, tz), -1)


def full_to_local(
    t_full: Array,
    boxes: Array,
    img_wh: Array,
    focal: Array | None = None,
    eps: float = CLIFF_EPS,
    principal: Array | None = None,
) -> Array:
    """Full-camera translation -> local camera ``(s, tx, ty)`` of each box.

    Exact inverse of :func:`local_to_full` (same ``eps``):
    ``s = (2 f / tZ - eps) / b`` and ``(tx, ty) = (tX, tY) - (c_box - c) tZ / f``
    with ``c`` the principal point (default ``(W/2, H/2)``).  Arguments broadcast
    as in :func:`local_to_full`; e.g. ``t_full[..., None, :]`` with (..., M, 3)
    RoIs gives the M local cameras of one full camera.
    """
    t_full, boxes, img_wh, focal, principal = as_arrays(t_full, boxes, img_wh, focal, principal)
    check_last_dim(t_full, 3, "t_full")
    check_last_dim(boxes, 3, "boxes")
    check_last_dim(img_wh, 2, "img_wh")
    xp = namespace(t_full)
    f = _focal(img_wh, focal)
    cu, cv = _centre(img_wh, principal)
    bs_eps = 2.0 * f / t_full[..., 2]  # = b s + eps
    s = (bs_eps - eps) / boxes[..., 2]
    tx = t_full[..., 0] - 2.0 * (boxes[..., 0] - cu) / bs_eps
    ty = t_full[..., 1] - 2.0 * (boxes[..., 1] - cv) / bs_eps
    return xp.stack(broadcast(s, tx, ty), -1)


def project(points: Array, K: Array, R: Array | None = None, t: Array | None = None) -> Array:
    """Perspective projection of 3D points to pixels.

    ``p = dehom(K (R X + t))``.

    Args:
        points: (..., N, 3) points (metres; world/body frame if R, t given,
            else camera frame).
        K: (..., 3, 3) intrinsics (:func:`intrinsics`).
        R: optional (..., 3, 3) rotation world -> camera (identity if None).
        t: optional (..., 3) translation (metres), e.g. ``t_full``.
    Returns:
        (..., N, 2) pixel coordinates.  Points with ``z <= 0`` give meaningless
        (but finite unless ``z == 0``) values; callers check depth if needed.
    """
    points, K, R, t = as_arrays(points, K, R, t)
    check_last_dim(points, 3, "points")
    p = points
    if R is not None:
        p = (R[..., None, :, :] @ p[..., :, None])[..., 0]
    if t is not None:
        p = p + t[..., None, :]
    h = (K[..., None, :, :] @ p[..., :, None])[..., 0]
    return h[..., :2] / h[..., 2:3]


def weak_perspective_project(points: Array, cam: Array) -> Array:
    """Local weak-perspective projection ``s (X_xy + (tx, ty))``.

    Args:
        points: (..., N, 3) body points (metres, camera-aligned axes, relative
            to the root the camera translation refers to).
        cam: (..., 3) local cameras ``(s, tx, ty)``.
    Returns:
        (..., N, 2) normalised crop coordinates ``((u - cx)/(b/2), (v - cy)/(b/2))``;
        see :func:`normalized_to_image` and :func:`.crops.normalized_to_crop_pixels`.
    """
    points, cam = as_arrays(points, cam)
    check_last_dim(points, 3, "points")
    check_last_dim(cam, 3, "cam")
    return cam[..., None, 0:1] * (points[..., :2] + cam[..., None, 1:3])


def image_to_normalized(points: Array, boxes: Array) -> Array:
    """Full-image pixels (..., N, 2) -> normalised crop coordinates of boxes (..., 3)."""
    points, boxes = as_arrays(points, boxes)
    check_last_dim(points, 2, "points")
    check_last_dim(boxes, 3, "boxes")
    return (points - boxes[..., None, :2]) / (boxes[..., None, 2:3] / 2.0)


def normalized_to_image(xy: Array, boxes: Array) -> Array:
    """Normalised crop coordinates (..., N, 2) of boxes (..., 3) -> full-image pixels."""
    xy, boxes = as_arrays(xy, boxes)
    check_last_dim(xy, 2, "xy")
    check_last_dim(boxes, 3, "boxes")
    return boxes[..., None, :2] + xy * (boxes[..., None, 2:3] / 2.0)


class ConsistencyResiduals(NamedTuple):
    """Camera-consistency residuals (see :func:`consistency_residuals`)."""

    x: Array
    y: Array
    s: Array


def _full_terms(cams, boxes, img_wh, eps):
    cams, boxes, img_wh = as_arrays(cams, boxes, img_wh)
    check_last_dim(cams, 3, "cams")
    check_last_dim(boxes, 3, "boxes")
    check_last_dim(img_wh, 2, "img_wh")
    if cams.ndim < 2:
        raise ValueError("cams must have shape (..., M, 3)")
    wh = img_wh[..., None, :]  # per person -> per RoI
    bs = boxes[..., 2] * cams[..., 0] + eps
    gx = cams[..., 1] + 2.0 * (boxes[..., 0] - wh[..., 0] / 2.0) / bs
    gy = cams[..., 2] + 2.0 * (boxes[..., 1] - wh[..., 1] / 2.0) / bs
    return broadcast(gx, gy, bs)


def consistency_residuals(
    cams: Array,
    boxes: Array,
    img_wh: Array,
    form: str = "paper",
    eps: float = CLIFF_EPS,
) -> ConsistencyResiduals:
    """Residuals of the Multi-RoI camera-consistency relations (paper Eq. 11-16).

    All RoIs of one person must give the same full camera, i.e. with
    ``g_x = tx + 2 (cx - W/2) / (b s)``, ``g_y`` likewise and ``g_s = b s``
    (``+ eps``), ``g_i = g_j`` for every pair.  (The focal length cancels:
    equal ``tZ = 2 f / (b s)`` is equal ``b s``; so no ``focal`` argument.)

    Args:
        cams: (..., M, 3) local cameras ``(s, tx, ty)`` of the M RoIs.
        boxes: (..., M, 3) the RoI boxes ``(cx, cy, b)`` (pixels).
        img_wh: (..., 2) image size per person (leading dims of ``cams`` without M).
        form: ``"paper"``: pairwise residuals, each of shape (..., M, M) with
            ``r[..., i, j] = g_i - g_j``.  ``"code"`` (authors' ``camera_losses``):
            each RoI against RoI 0, shape (..., M):
            ``x[..., i] = g_x[0] - g_x[i]``, ``y`` likewise, ``s[..., i] = g_s[i] - g_s[0]``
            (unweighted; the loss applies 1e-4).
        eps: added to ``b s``.
    Returns:
        :class:`ConsistencyResiduals` ``(x, y, s)``: ``x``, ``y`` dimensionless
        (camera-frame translation units over depth ratio), ``s`` in pixels.
    """
    gx, gy, gs = _full_terms(cams, boxes, img_wh, eps)
    if form == "paper":
        return ConsistencyResiduals(
            gx[..., :, None] - gx[..., None, :],
            gy[..., :, None] - gy[..., None, :],
            gs[..., :, None] - gs[..., None, :],
        )
    if form == "code":
        return ConsistencyResiduals(gx[..., :1] - gx, gy[..., :1] - gy, gs - gs[..., :1])
    raise ValueError(f"form must be 'paper' or 'code', got {form!r}")


def _reduce(x: Array, reduction: str) -> Array:
    if reduction == "none":
        return x
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def consistency_loss(
    cams: Array,
    boxes: Array,
    img_wh: Array,
    form: str = "paper",
    weights: tuple[float, float, float] | None = None,
    reduction: str = "mean",
    eps: float = CLIFF_EPS,
) -> Array:
    """Multi-RoI camera-consistency loss.

    * ``form="paper"`` (Eq. 13/16): per person
      ``sum_{i,j} wx r_x(i,j)^2 + wy r_y(i,j)^2 + ws r_s(i,j)^2`` over all
      ordered pairs (``i == j`` terms are 0), weights default to
      :data:`PAPER_CONSISTENCY_WEIGHTS` = (0.1, 0.1, 1e-4) for (x, y, s).
    * ``form="code"`` (authors' ``camera_losses``): per person
      ``mean_i (r_x(i) + r_y(i))^2 + mean_i (1e-4 r_s(i))^2``, RoI 0 included
      in the means (its residual is 0), so that ``reduction="mean"`` over a
      batch equals the code's ``MSELoss`` over its B*M rows.  ``weights``
      ``(wx, wy, ws)`` default to ``(1, 1, 1e-4)`` and scale the residuals
      *before* squaring, ``(wx r_x + wy r_y)^2 + (ws r_s)^2``.  Note the
      effective weight on the squared scale residual is 1e-8 in the code vs
      1e-4 in the paper.

    Args:
        cams, boxes, img_wh, eps: as in :func:`consistency_residuals`.
        weights: see above.
        reduction: over the leading (person) dims: "mean" (default), "sum", "none".
    Returns:
        Scalar (or (...,) for ``reduction="none"``) loss, same backend as the input.
    """
    r = consistency_residuals(cams, boxes, img_wh, form=form, eps=eps)
    if form == "paper":
        wx, wy, ws = PAPER_CONSISTENCY_WEIGHTS if weights is None else weights
        per = wx * r.x**2 + wy * r.y**2 + ws * r.s**2
        per = per.sum(-1).sum(-1)
    else:
        wx, wy, ws = (1.0, 1.0, CODE_SCALE_WEIGHT) if weights is None else weights
        per = ((wx * r.x + wy * r.y) ** 2).mean(-1) + ((ws * r.s) ** 2).mean(-1)
    return _reduce(per, reduction)
