"""Crops of person boxes: affine matrices, warping (torch and OpenCV), normalisation.

Pixel-centre convention
-----------------------
Continuous coordinates follow OpenCV everywhere (full image and crops): the
centre of the pixel in row ``i``, column ``j`` is at ``(x, y) = (j, i)``, so
an image of width ``W`` covers ``x`` in ``[-0.5, W - 0.5]``.  A crop of
``h x w`` pixels is the warp ``crop(x', y') = image(A^-1 (x', y'))`` sampled
at the crop's pixel centres ``x' = 0..w-1``, ``y' = 0..h-1``.  This is exactly
what ``cv2.warpAffine(image, A, (w, h))`` computes (:func:`crop_image_np`), and
:func:`crop_images` (a batch of same-sized images) and :func:`crop_batch` (every RoI
of every person of several images of any sizes, in one call, on the tensors'
device) reproduce it with ``torch.nn.functional.grid_sample(align_corners=False)``
(normalised grid coordinate ``g = (2 x + 1) / W - 1``) from the same affines.

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
    "crop_batch",
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


def _crop_theta(affines: torch.Tensor, crop_hw: Sequence[int], img_hw: Sequence[int]) -> torch.Tensor:
    """``affine_grid`` thetas (..., 2, 3), float64, for image -> crop pixel ``affines``: they map
    normalised crop coordinates to normalised image coordinates (``align_corners=False``:
    ``g = (2 x + 1) / W - 1`` for pixel coordinate ``x``), composed in float64 as
    crop-normalised -> crop pixels -> (A^-1) image pixels -> image-normalised. ``img_hw`` is
    the size of the tensor sampled (for :func:`crop_batch`, the zero-padded canvas)."""
    h, w = crop_hw
    img_h, img_w = (int(v) for v in img_hw)
    f64 = {"device": affines.device, "dtype": torch.float64}
    from_crop_norm = torch.tensor([[w / 2.0, 0.0, (w - 1) / 2.0], [0.0, h / 2.0, (h - 1) / 2.0]], **f64)
    to_img_norm = torch.tensor([[2.0 / img_w, 0.0, 1.0 / img_w - 1.0], [0.0, 2.0 / img_h, 1.0 / img_h - 1.0]], **f64)
    inv = invert_affine(affines.to(torch.float64))  # crop pixels -> image pixels
    return compose_affine(compose_affine(from_crop_norm, inv), to_img_norm)


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
    theta = _crop_theta(aff, (h, w), images.shape[-2:]).reshape(bsz * m, 2, 3).to(images.dtype)
    grid = F.affine_grid(theta, [bsz * m, 1, h, w], align_corners=False)  # (B*M, h, w, 2)
    grid = grid.reshape(bsz, m * h, w, 2)  # stack the M grids: sample each image once
    out = F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)
    out = out.reshape(bsz, images.shape[1], m, h, w).permute(0, 2, 1, 3, 4)
    return out[:, 0] if single else out


def crop_batch(
    images: Sequence[Array] | torch.Tensor,
    image_index: Array,
    affines: Array,
    crop_hw: Sequence[int],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Cut every RoI of every person of several images, of different sizes, in one ``grid_sample``.

    The same warp as :func:`crop_images` and :func:`crop_image_np` (``cv2.warpAffine`` with
    ``INTER_LINEAR``, zeros outside; pixel-centre convention of the module docstring), from
    the same :func:`crop_affine` matrices, on ``device`` (CPU or CUDA). The images are copied
    once into a zero-initialised canvas ``(C, B, H_max, W_max)`` (each image in its top-left
    corner, so a RoI reaching past its image's right or bottom edge reads the canvas' zeros,
    exactly like the zeros outside a lone image) and every crop pixel samples the canvas slice
    of its own image: one image is sampled bilinearly in 2D; several are the depth axis of a
    volume, each crop's depth coordinate is the centre of its image's slice, where trilinear
    sampling weighs that slice by 1 (up to float rounding, ~1e-6) and its neighbours by 0.

    Args:
        images: B images, channels last ``(H_b, W_b, C)`` (torch tensors or numpy arrays,
            uint8 or float; pinned CPU tensors are copied to ``device`` asynchronously), or
            one ``(B, C, H, W)`` tensor.
        image_index: (N,) integers: person ``n``'s RoIs are cut from ``images[image_index[n]]``.
        affines: (N, M, 2, 3) or (N, 2, 3) image -> crop pixel affines (numpy or torch),
            e.g. :func:`crop_affine` of (N, M, 3) RoIs.
        crop_hw: ``(h, w)`` output size.
        device: where to cut (default: the first image's device; CPU for numpy images).
        dtype: float dtype of the canvas and the crops (default float32; float64 when an
            image is float64).
        mode: ``grid_sample`` interpolation ("bilinear" or "nearest").
    Returns:
        (N, M, C, h, w) crops (N, C, h, w for (N, 2, 3) affines), values in the images'
        range (0..255 for uint8). A strided view of the ``grid_sample`` output: call
        ``.contiguous(memory_format=...)`` for the layout a network wants.

    Notes:
        Memory: the canvas holds ``B * C * H_max * W_max`` floats (16 images of 12 Mpx: 2.3 GB
        in float32), so pass only the images whose persons are cut. Positions are composed in
        float64 and sampled in ``dtype`` (float32: within ~1e-3 px for canvases up to ~8k);
        like OpenCV's bilinear warp, no anti-aliasing when a large box is shrunk. With uint8
        images the crops match :func:`crop_image_np` within 1 grey level (OpenCV rounds to
        uint8 and quantises positions to 1/32 px).
    """
    h, w = _check_hw(crop_hw)
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError("images must be a (B, C, H, W) tensor or a sequence of (H, W, C) images")
        imgs, channels_last = list(images), False
    else:
        imgs, channels_last = [], True
        for im in images:
            t = im if isinstance(im, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(im))
            if t.ndim != 3:
                raise ValueError(f"each image must be (H, W, C); got shape {tuple(t.shape)}")
            imgs.append(t)
    if not imgs:
        raise ValueError("crop_batch needs at least one image")
    sizes = [(int(t.shape[0]), int(t.shape[1])) if channels_last else (int(t.shape[1]), int(t.shape[2])) for t in imgs]
    chans = [int(t.shape[-1] if channels_last else t.shape[0]) for t in imgs]
    n_ch = chans[0]
    if any(c != n_ch for c in chans):
        raise ValueError(f"all images need the same number of channels; got {chans}")
    dev = torch.device(device) if device is not None else imgs[0].device
    if dtype is None:
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in imgs) else torch.float32
    aff = torch.as_tensor(affines)
    if aff.shape[-2:] != (2, 3) or aff.ndim not in (3, 4):
        raise ValueError(f"affines must be (N, 2, 3) or (N, M, 2, 3), got {tuple(aff.shape)}")
    single = aff.ndim == 3
    if single:
        aff = aff[:, None]
    n, m = aff.shape[:2]
    idx = torch.as_tensor(image_index).reshape(-1)
    if idx.shape[0] != n:
        raise ValueError(f"image_index has {idx.shape[0]} entries for {n} persons' affines")
    n_img = len(imgs)
    if idx.is_floating_point() or (n and (int(idx.min()) < 0 or int(idx.max()) >= n_img)):
        raise ValueError(f"image_index must hold integers in [0, {n_img})")
    canvas_h = max(hh for hh, _ in sizes)
    canvas_w = max(ww for _, ww in sizes)
    canvas = torch.zeros((1, n_ch, n_img, canvas_h, canvas_w), dtype=dtype, device=dev)
    for b, (t, (hh, ww)) in enumerate(zip(imgs, sizes)):
        t = t.to(dev, non_blocking=True)  # as stored (uint8 HWC: a plain copy, asynchronous from pinned memory)
        canvas[0, :, b, :hh, :ww].copy_(t.permute(2, 0, 1) if channels_last else t)
    if n == 0:
        return torch.zeros((0, n_ch, h, w) if single else (0, m, n_ch, h, w), dtype=dtype, device=dev)
    theta = _crop_theta(aff.to(dev), (h, w), (canvas_h, canvas_w)).reshape(n * m, 2, 3).to(dtype)
    grid = F.affine_grid(theta, [n * m, 1, h, w], align_corners=False)  # (N*M, h, w, 2)
    if n_img == 1:  # stack the N*M grids: the image is sampled once
        out = F.grid_sample(canvas[:, :, 0], grid.reshape(1, n * m * h, w, 2), mode=mode, padding_mode="zeros",
                            align_corners=False).reshape(n_ch, n * m, h, w)
    else:  # depth = the image: the centre of slice b is (2 b + 1) / B - 1 (align_corners=False)
        z = (2.0 * idx.to(device=dev, dtype=torch.float64) + 1.0) / n_img - 1.0
        z = z.to(dtype).repeat_interleave(m)[:, None, None, None].expand(n * m, h, w, 1)
        grid3 = torch.cat([grid, z], dim=-1)[None]  # (1, N*M, h, w, 3): (x, y, image)
        out = F.grid_sample(canvas, grid3, mode=mode, padding_mode="zeros", align_corners=False)[0]
    out = out.permute(1, 0, 2, 3).reshape(n, m, n_ch, h, w)  # (C, N*M, h, w) -> (N, M, C, h, w)
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
