"""Crops of person boxes: affine matrices, warping (torch and OpenCV), normalisation.

Pixel-centre convention
-----------------------
Continuous coordinates follow OpenCV everywhere (full image and crops): the
centre of the pixel in row ``i``, column ``j`` is at ``(x, y) = (j, i)``, so
an image of width ``W`` covers ``x`` in ``[-0.5, W - 0.5]``.  A crop of
``h x w`` pixels is the warp ``crop(x', y') = image(A^-1 (x', y'))`` sampled
at the crop's pixel centres ``x' = 0..w-1``, ``y' = 0..h-1``.  This is exactly
what ``cv2.warpAffine(image, A, (w, h))`` computes, and :func:`crop_images`
reproduces it with ``torch.nn.functional.grid_sample(align_corners=False)``
(normalised grid coordinate ``g = (2 x + 1) / W - 1``).

The crop affine (:func:`crop_affine`) follows the Multi-RoI/CLIFF code
(mmpose-style ``get_affine_transform``): the box centre ``(cx, cy)`` maps to
``(w / 2, h / 2)`` and the scale is ``k = h / b`` crop pixels per image pixel
(so the box's ``aspect * b`` width maps to ``w`` when ``w / h`` equals the
box aspect: 192/256 = 0.75 for "rect", 1 for "square").  Note that with this
convention the box centre lands half a pixel right/below the geometric centre
of the crop's pixel grid (whose centre is at ``((w-1)/2, (h-1)/2)``); we keep
it because trained checkpoints saw crops made this way.

Pixels whose source falls outside the image are 0 (bilinear interpolation
treats the outside as zeros, in both paths).

Normalised crop coordinates
---------------------------
The weak-perspective cameras (:mod:`.cameras`) predict *normalised crop
coordinates* ``x_n = (u - cx) / (b / 2)``, ``y_n = (v - cy) / (b / 2)`` for a
full-image point ``(u, v)``.  In crop pixels (no rotation)
``x' = w / 2 + x_n h / 2`` and ``y' = h / 2 + y_n h / 2``; hence the crop
spans ``x_n`` in ``[-w/h, w/h]`` (``[-0.75, 0.75]`` for "rect") and ``y_n`` in
``[-1, 1]``.  :func:`normalized_to_crop_pixels` / :func:`crop_pixels_to_normalized`
convert.  (The authors' 2D-keypoint loss instead normalises each axis by its own
crop side, ``2 x' / w - 1``; that is a loss-space choice, not the camera's.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ._array import (
    Array,
    as_arrays,
    broadcast,
    check_last_dim,
    constant_like,
    namespace,
)

__all__ = [
    "CROP_SIZES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "compose_affine",
    "crop_affine",
    "crop_image_np",
    "crop_images",
    "crop_pixels_to_normalized",
    "crop_size",
    "denormalize_crops",
    "invert_affine",
    "map_points",
    "normalize_crops",
    "normalized_to_crop_pixels",
]

#: Crop sizes (height, width) in pixels for the two box conventions.
CROP_SIZES = {"square": (224, 224), "rect": (256, 192)}
#: ImageNet RGB mean/std applied after dividing by 255.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def crop_size(aspect: str) -> tuple[int, int]:
    """``(h, w)`` of the network crop for ``aspect`` ("rect": 256x192, "square": 224x224)."""
    try:
        return CROP_SIZES[aspect]
    except KeyError:
        raise ValueError(f"aspect must be one of {sorted(CROP_SIZES)}, got {aspect!r}") from None


def _check_hw(crop_hw: Sequence[int]) -> tuple[int, int]:
    h, w = (int(v) for v in crop_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"crop_hw must be positive, got {crop_hw}")
    return h, w


def crop_affine(boxes: Array, crop_hw: Sequence[int], rot_deg: Array | None = None) -> Array:
    """Image -> crop pixel affine matrices for boxes ``(cx, cy, b)``.

    ``A = [k R | (w/2, h/2) - k R (cx, cy)]`` with ``k = h / b`` and
    ``R = [[cos a, sin a], [-sin a, cos a]]`` (``a = rot_deg``, degrees), the
    matrix of ``cv2.getRotationMatrix2D``: a positive angle shows the image
    content rotated counter-clockwise in the crop (same direction as the
    Multi-RoI/mmpose ``get_affine_transform(rot=a)``).  Test time uses no
    rotation; ``rot_deg`` is for training augmentation.

    Args:
        boxes: (..., 3) boxes in full-image pixels (numpy or torch).
        crop_hw: ``(h, w)`` crop size in pixels, e.g. (256, 192) or (224, 224).
            ``w / h`` should equal the box convention's aspect ratio.
        rot_deg: optional rotation in degrees, broadcastable to ``boxes[..., 0]``.
    Returns:
        (..., 2, 3) affine matrices mapping full-image pixel coordinates to crop
        pixel coordinates (pixel-centre convention of this module).
    """
    h, w = _check_hw(crop_hw)
    boxes, rot = as_arrays(boxes, rot_deg)
    check_last_dim(boxes, 3, "boxes")
    xp = namespace(boxes)
    cx, cy, b = boxes[..., 0], boxes[..., 1], boxes[..., 2]
    k = h / b
    if rot is None:
        a00, a01, a10, a11 = k, k * 0, k * 0, k
    else:
        r = rot * (math.pi / 180.0)
        c, s = xp.cos(r) * k, xp.sin(r) * k
        a00, a01, a10, a11 = c, s, -s, c
    t0 = w / 2.0 - (a00 * cx + a01 * cy)
    t1 = h / 2.0 - (a10 * cx + a11 * cy)
    row0 = xp.stack(broadcast(a00, a01, t0), -1)
    row1 = xp.stack(broadcast(a10, a11, t1), -1)
    return xp.stack([row0, row1], -2)


def invert_affine(affine: Array) -> Array:
    """Inverse of (..., 2, 3) affine matrices (e.g. crop -> image)."""
    (affine,) = as_arrays(affine)
    if affine.shape[-2:] != (2, 3):
        raise ValueError(f"affine must have shape (..., 2, 3), got {tuple(affine.shape)}")
    xp = namespace(affine)
    a, b_, tx = affine[..., 0, 0], affine[..., 0, 1], affine[..., 0, 2]
    c, d, ty = affine[..., 1, 0], affine[..., 1, 1], affine[..., 1, 2]
    det = a * d - b_ * c
    ia, ib, ic, id_ = d / det, -b_ / det, -c / det, a / det
    itx = -(ia * tx + ib * ty)
    ity = -(ic * tx + id_ * ty)
    return xp.stack([xp.stack([ia, ib, itx], -1), xp.stack([ic, id_, ity], -1)], -2)


def compose_affine(first: Array, second: Array) -> Array:
    """Affine of ``x -> second(first(x))`` for (..., 2, 3) matrices."""
    first, second = as_arrays(first, second)
    m = second[..., :, :2] @ first[..., :, :2]
    t = (second[..., :, :2] @ first[..., :, 2:3])[..., 0] + second[..., :, 2]
    xp = namespace(first)
    if xp is np:
        return np.concatenate([m, t[..., None]], axis=-1)
    return torch.cat([m, t[..., None]], dim=-1)


def map_points(points: Array, affine: Array) -> Array:
    """Apply (..., 2, 3) affines to (..., N, 2) points: ``A[:, :2] p + A[:, 2]``.

    Leading dimensions of ``points[..., 0, 0]`` and ``affine[..., 0, 0]``
    broadcast.  Use it to take full-image keypoints into a crop (and
    :func:`invert_affine` for the way back).
    """
    points, affine = as_arrays(points, affine)
    check_last_dim(points, 2, "points")
    m = affine[..., None, :, :2]  # (..., 1, 2, 2)
    t = affine[..., None, :, 2]  # (..., 1, 2)
    return (m @ points[..., :, None])[..., 0] + t


def crop_images(
    images: torch.Tensor,
    affines: Array,
    crop_hw: Sequence[int],
    mode: str = "bilinear",
) -> torch.Tensor:
    """Warp crops out of a batch of images with ``grid_sample`` (zeros outside).

    Equivalent to ``cv2.warpAffine(image, A, (w, h), INTER_LINEAR,
    BORDER_CONSTANT, 0)`` for every affine ``A`` (see the module docstring for
    the pixel-centre convention), batched and differentiable, on the images'
    device.

    Args:
        images: (B, C, H, W) float tensor (any value range, e.g. 0..255 RGB);
            uint8 is accepted and converted to float32.  ``B == 1`` broadcasts
            against the affines' batch.
        affines: (B, 2, 3) or (B, M, 2, 3) image -> crop pixel affines (numpy or
            torch), e.g. from :func:`crop_affine` on (B, M, 3) RoIs.
        crop_hw: ``(h, w)`` output size.
        mode: ``grid_sample`` interpolation ("bilinear" or "nearest").
    Returns:
        (B, C, h, w) or (B, M, C, h, w) crops, dtype of ``images`` (float32 for
        uint8 input).

    Notes:
        The sampling grid is composed in float64 and cast to the images' dtype
        (float32 keeps it within ~1e-3 px for images up to ~8k; float16 does
        not, so crop half-precision images after casting to float32).  Like
        the reference pipeline (cv2 bilinear), there is no anti-aliasing when
        a large box is shrunk to the crop size.  With uint8 images the result
        matches :func:`crop_image_np` to within 1 grey level (OpenCV rounds to
        uint8 and quantises positions to 1/32 px).
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a (B, C, H, W) torch tensor")
    h, w = _check_hw(crop_hw)
    if not images.is_floating_point():
        images = images.to(torch.float32)
    aff = torch.as_tensor(affines, device=images.device)
    if aff.shape[-2:] != (2, 3) or aff.ndim not in (3, 4):
        raise ValueError(f"affines must be (B, 2, 3) or (B, M, 2, 3), got {tuple(aff.shape)}")
    single = aff.ndim == 3
    if single:
        aff = aff[:, None]
    bsz, m = aff.shape[:2]
    if images.shape[0] != bsz:
        if images.shape[0] == 1:
            images = images.expand(bsz, -1, -1, -1)
        elif bsz == 1:
            aff = aff.expand(images.shape[0], -1, -1, -1)
            bsz = images.shape[0]
        else:
            raise ValueError(f"batch mismatch: images {images.shape[0]} vs affines {bsz}")
    img_h, img_w = images.shape[-2:]
    # theta maps normalised crop coords -> normalised image coords (align_corners=False:
    # g = (2 x + 1) / W - 1 for pixel coordinate x), composed in float64:
    #   crop-normalised -> crop pixels -> (A^-1) image pixels -> image-normalised.
    f64 = {"device": images.device, "dtype": torch.float64}
    from_crop_norm = torch.tensor([[w / 2.0, 0.0, (w - 1) / 2.0], [0.0, h / 2.0, (h - 1) / 2.0]], **f64)
    to_img_norm = torch.tensor([[2.0 / img_w, 0.0, 1.0 / img_w - 1.0], [0.0, 2.0 / img_h, 1.0 / img_h - 1.0]], **f64)
    inv = invert_affine(aff.to(torch.float64))  # (B, M, 2, 3) crop pixels -> image pixels
    theta = compose_affine(compose_affine(from_crop_norm, inv), to_img_norm)
    theta = theta.reshape(bsz * m, 2, 3).to(images.dtype)
    grid = F.affine_grid(theta, [bsz * m, 1, h, w], align_corners=False)  # (B*M, h, w, 2)
    grid = grid.reshape(bsz, m * h, w, 2)  # stack the M grids: sample each image once
    out = F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)
    out = out.reshape(bsz, images.shape[1], m, h, w).permute(0, 2, 1, 3, 4)
    return out[:, 0] if single else out


def crop_image_np(
    image: np.ndarray,
    affine: np.ndarray,
    crop_hw: Sequence[int],
    interpolation: int | None = None,
) -> np.ndarray:
    """Crop one image with OpenCV (``cv2.warpAffine``, zeros outside).

    Args:
        image: (H, W) or (H, W, C) array (uint8 or float), channels last.
        affine: (2, 3) image -> crop pixel affine (:func:`crop_affine`).
        crop_hw: ``(h, w)`` output size.
        interpolation: OpenCV flag, default ``cv2.INTER_LINEAR``.
    Returns:
        (h, w[, C]) crop with the input's dtype.
    """
    h, w = _check_hw(crop_hw)
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (2, 3):
        raise ValueError(f"affine must have shape (2, 3), got {a.shape}")
    flags = cv2.INTER_LINEAR if interpolation is None else interpolation
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        a,
        (w, h),
        flags=flags,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def _mean_std(like: Array, channel_axis: int, ndim: int):
    mean = constant_like(IMAGENET_MEAN, like)
    std = constant_like(IMAGENET_STD, like)
    axis = channel_axis % ndim
    shape = [1] * (ndim - axis)
    shape[0] = 3
    return mean.reshape(shape), std.reshape(shape)


def normalize_crops(crops: Array, channel_axis: int = -3) -> Array:
    """RGB crops in 0..255 -> network input: ``(x / 255 - mean) / std`` (ImageNet).

    Args:
        crops: RGB values 0..255 (numpy or torch, uint8 or float) with the
            channel axis at ``channel_axis`` (-3 for (..., 3, h, w) tensors,
            -1 for (h, w, 3) images).
    Returns:
        float array of the same shape (float32 for integer input).
    """
    x = crops
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            x = x.to(torch.float32)
    else:
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
    if x.shape[channel_axis] != 3:
        raise ValueError(f"expected 3 channels on axis {channel_axis}, got shape {tuple(x.shape)}")
    mean, std = _mean_std(x, channel_axis, x.ndim)
    return (x / 255.0 - mean) / std


def denormalize_crops(crops: Array, channel_axis: int = -3) -> Array:
    """Inverse of :func:`normalize_crops`: returns float RGB values in 0..255."""
    x = crops
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x)
    if x.shape[channel_axis] != 3:
        raise ValueError(f"expected 3 channels on axis {channel_axis}, got shape {tuple(x.shape)}")
    mean, std = _mean_std(x, channel_axis, x.ndim)
    return (x * std + mean) * 255.0


def normalized_to_crop_pixels(xy: Array, crop_hw: Sequence[int]) -> Array:
    """Normalised crop coordinates (..., 2) -> crop pixels: ``(w/2 + x h/2, h/2 + y h/2)``."""
    h, w = _check_hw(crop_hw)
    (xy,) = as_arrays(xy)
    check_last_dim(xy, 2, "xy")
    xp = namespace(xy)
    return xp.stack([w / 2.0 + xy[..., 0] * (h / 2.0), h / 2.0 + xy[..., 1] * (h / 2.0)], -1)


def crop_pixels_to_normalized(xy: Array, crop_hw: Sequence[int]) -> Array:
    """Crop pixels (..., 2) -> normalised crop coordinates (inverse of the above)."""
    h, w = _check_hw(crop_hw)
    (xy,) = as_arrays(xy)
    check_last_dim(xy, 2, "xy")
    xp = namespace(xy)
    return xp.stack([(xy[..., 0] - w / 2.0) / (h / 2.0), (xy[..., 1] - h / 2.0) / (h / 2.0)], -1)
