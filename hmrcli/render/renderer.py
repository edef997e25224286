"""Mesh -> shaded RGB (optionally over a photo), mesh-index mask and depth map.

See :mod:`hmrcli.render` for the choice of renderer and :mod:`hmrcli.render.raster` for the
camera, pixel, near-plane and depth conventions.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hmrcli.render.raster import (
    DEFAULT_MAX_PAIRS,
    DEFAULT_NEAR,
    Fragments,
    clip_near,
    rasterize,
)

__all__ = [
    "AMBIENT",
    "BODY_COLOR",
    "DIFFUSE",
    "NEAR",
    "PALETTE",
    "RenderOutput",
    "default_colors",
    "quality_color",
    "render",
    "render_overlay",
]

NEAR = DEFAULT_NEAR
"""Near-plane distance in metres: only geometry with camera-frame ``z > NEAR`` is drawn."""

BODY_COLOR: tuple[float, float, float] = (0.65, 0.74, 0.86)
"""Default body colour (RGB in [0, 1], as written to the 8-bit image): a light blue."""

PALETTE: tuple[tuple[float, float, float], ...] = (
    BODY_COLOR,
    (0.93, 0.64, 0.62),  # salmon pink
    (0.62, 0.85, 0.62),  # light green
    (0.95, 0.82, 0.52),  # light amber
    (0.78, 0.67, 0.92),  # lavender
    (0.56, 0.83, 0.82),  # light teal
    (0.92, 0.70, 0.85),  # orchid
    (0.80, 0.80, 0.62),  # khaki
)
"""Per-mesh default colours, cycled for more meshes than entries."""

# Headlight shading (light at the camera centre, two-sided):
# colour = base colour * (AMBIENT + DIFFUSE * |cos(normal, direction to the camera)|).
AMBIENT = 0.3
"""Ambient term of the headlight shading (fraction of the base colour)."""
DIFFUSE = 0.7
"""Lambertian term of the headlight shading (AMBIENT + DIFFUSE = 1: full colour head-on)."""

MeshInput = tuple[Any, Any]


@dataclass
class RenderOutput:
    """Result of :func:`render`, all arrays numpy on the CPU.

    Attributes:
        rgb: (H, W, 3) uint8 RGB: shaded meshes alpha-blended over the background (black if
            none was given); pixels where ``mask == -1`` are the background, unchanged.
        mask: (H, W) int16: index (in the ``meshes`` sequence) of the mesh visible at each
            pixel, -1 where no mesh is.
        depth: (H, W) float32: camera-frame z (metres) of the visible surface, +inf where no
            mesh is.
    """

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray


def default_colors(n: int) -> list[tuple[float, float, float]]:
    """The default colours of ``n`` meshes: :data:`PALETTE` cycled (mesh 0 is light blue)."""
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def quality_color(score: float | None) -> tuple[float, float, float]:
    """Overlay colour (r, g, b in [0, 1]) of a person's quality score in [0, 1] (``--overlay-quality``):
    red at 0, yellow at 0.5, green at 1, linear in between; grey when there is no score."""
    if score is None or not np.isfinite(score):
        return (0.6, 0.6, 0.6)
    s = min(1.0, max(0.0, float(score)))
    if s < 0.5:
        return (0.95, 0.15 + 1.7 * s, 0.15)
    return (0.95 - 1.7 * (s - 0.5), 1.0 - 0.3 * (s - 0.5), 0.15)


# -- validation ------------------------------------------------------------------------------


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - anything that is not array-like
        raise ValueError(f"{name} must be array-like; got {type(x).__name__}") from e


def _matrix(x: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric; got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    return a


def _check_intrinsics(K: Any) -> np.ndarray:
    k = _matrix(K, (3, 3), "K")
    if not np.allclose(k[2], (0.0, 0.0, 1.0), atol=1e-8):
        raise ValueError(f"K must be a pinhole intrinsic matrix with last row (0, 0, 1); got {k[2].tolist()}")
    if abs(np.linalg.det(k[:2, :2])) < 1e-12:
        raise ValueError("K has a zero focal length (K[0, 0] * K[1, 1] - K[0, 1] * K[1, 0] == 0)")
    return k


def _check_image_wh(image_wh: Any) -> tuple[int, int]:
    try:
        w, h = image_wh
    except (TypeError, ValueError) as e:
        raise ValueError(f"image_wh must be a (width, height) pair; got {image_wh!r}") from e
    for name, val in (("width", w), ("height", h)):
        if isinstance(val, bool) or not isinstance(val, numbers.Integral) or int(val) <= 0:
            raise ValueError(f"image_wh {name} must be a positive integer; got {val!r}")
    return int(w), int(h)


def _check_background(background: Any, w: int, h: int) -> np.ndarray | None:
    if background is None:
        return None
    if not isinstance(background, np.ndarray):
        raise ValueError(f"background must be a numpy array; got {type(background).__name__}")
    if background.shape != (h, w, 3):
        raise ValueError(f"background must have shape (H, W, 3) = {(h, w, 3)}; got {background.shape}")
    if background.dtype != np.uint8:
        raise ValueError(f"background must be uint8 RGB; got dtype {background.dtype}")
    return background


def _check_colors(colors: Any, n: int) -> list[tuple[float, float, float]]:
    if colors is None:
        return default_colors(n)
    colors = list(colors)
    if len(colors) < n:
        raise ValueError(f"colors has {len(colors)} entries for {n} meshes")
    out = []
    for i, c in enumerate(colors[:n]):
        a = np.asarray(c, dtype=np.float64) if not isinstance(c, torch.Tensor) else c.detach().cpu().double().numpy()
        if a.shape != (3,) or not np.isfinite(a).all() or (a < 0).any() or (a > 1).any():
            raise ValueError(f"colors[{i}] must be an (r, g, b) triple of floats in [0, 1]; got {c!r}")
        out.append((float(a[0]), float(a[1]), float(a[2])))
    return out


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1]; got {alpha!r}")
    return float(alpha)


def _resolve_device(device: str | torch.device | None, meshes: Sequence[MeshInput]) -> torch.device:
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"invalid device {device!r}") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        return dev
    for mesh in meshes:
        for x in mesh:
            if isinstance(x, torch.Tensor) and x.device.type != "cpu":
                return x.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64)


def _as_tensor(x: Any, name: str, integer: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Validate the dtype of an array-like (integer only, or any real number) and convert it."""
    if isinstance(x, torch.Tensor):
        ok = x.dtype in _INT_DTYPES or (not integer and x.is_floating_point())
        if not ok:
            raise ValueError(f"{name} must be {'integer' if integer else 'real'} numbers; got {x.dtype}")
        return x.detach().to(device=device, dtype=dtype)
    a = _to_numpy(x, name)
    if a.dtype.kind not in ("iu" if integer else "iuf"):
        raise ValueError(f"{name} must be {'integer' if integer else 'real'} numbers; got dtype {a.dtype}")
    np_dtype = np.int64 if integer else np.float64
    return torch.from_numpy(np.array(a, dtype=np_dtype, copy=True)).to(device=device, dtype=dtype)


def _mesh_tensors(
    mesh: Any, i: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated (V, 3) vertices in ``dtype`` and (F, 3) int64 faces of ``meshes[i]`` on ``device``."""
    try:
        verts, faces = mesh
    except (TypeError, ValueError) as e:
        raise ValueError(f"meshes[{i}] must be a (vertices, faces) pair") from e
    v = _as_tensor(verts, f"meshes[{i}] vertices", False, device, dtype)
    f = _as_tensor(faces, f"meshes[{i}] faces (integer vertex indices)", True, device, torch.int64)
    if v.dim() != 2 or v.shape[1] != 3:
        raise ValueError(f"meshes[{i}] vertices must have shape (V, 3); got {tuple(v.shape)}")
    if f.dim() != 2 or f.shape[1] != 3:
        raise ValueError(f"meshes[{i}] faces must have shape (F, 3); got {tuple(f.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"meshes[{i}] vertices must be finite")
    if f.numel() and (int(f.min()) < 0 or int(f.max()) >= v.shape[0]):
        raise ValueError(f"meshes[{i}] faces index vertices outside [0, {v.shape[0]})")
    return v, f


# -- rendering -------------------------------------------------------------------------------


def _vertex_normals(v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals (V, 3), unit length (zero for unused vertices)."""
    tri = v[f]
    fn = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # |fn| = 2 * area
    vn = torch.zeros_like(v)
    vn.index_add_(0, f.reshape(-1), fn.repeat_interleave(3, 0))
    return vn / vn.norm(dim=1, keepdim=True).clamp(min=1e-30)


def _intensity(frags: Fragments, tri_v: torch.Tensor, tri_n: torch.Tensor, k_inv: torch.Tensor) -> torch.Tensor:
    """Two-sided Lambertian headlight intensity ``AMBIENT + DIFFUSE |cos|`` (P,) of the visible
    points, cos being the angle between the interpolated normal and the ray to the camera.

    tri_v, tri_n: (T, 3, 3) camera-frame vertices and vertex normals of the rasterized triangles;
    k_inv: (3, 3) inverse intrinsics.
    """
    normal = frags.interpolate(tri_n)
    n_len = torch.linalg.vector_norm(normal, dim=1)
    bad = (n_len < 1e-6).nonzero().squeeze(1)  # vertex normals cancelled out: use the face normal
    if bad.numel():
        tv = tri_v.index_select(0, frags.tri.index_select(0, bad))
        fn = torch.linalg.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0])
        normal[bad] = fn
        n_len[bad] = torch.linalg.vector_norm(fn, dim=1)
    dtype = normal.dtype
    x = (frags.pix % frags.width).to(dtype)
    y = torch.div(frags.pix, frags.width, rounding_mode="floor").to(dtype)
    ki = k_inv.to(dtype)
    rx = ki[0, 0] * x + ki[0, 1] * y + ki[0, 2]  # ray through the pixel centre, z component 1
    ry = ki[1, 0] * x + ki[1, 1] * y + ki[1, 2]
    dot = normal[:, 0] * rx + normal[:, 1] * ry + normal[:, 2]
    cos = dot.abs_() / (n_len * torch.sqrt(rx * rx + ry * ry + 1.0)).clamp_(min=1e-30)
    return cos.clamp_(max=1.0).mul_(DIFFUSE).add_(AMBIENT)


def render(
    meshes: Sequence[MeshInput],
    K: Any,
    image_wh: tuple[int, int],
    R: Any = None,
    t: Any = None,
    background: np.ndarray | None = None,
    colors: Sequence[tuple[float, float, float]] | None = None,
    alpha: float = 1.0,
    device: str | torch.device | None = None,
) -> RenderOutput:
    """Render meshes seen by a pinhole camera: shaded RGB, mesh-index mask and depth.

    Args:
        meshes: ``[(vertices, faces), ...]``: vertices (V, 3) metres (numpy or torch, any real
            dtype), faces (F, 3) integer vertex indices.  Several meshes occlude each other.
        K: (3, 3) intrinsics in pixels (OpenCV: ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``,
            pixel (0, 0) = centre of the top-left pixel).
        image_wh: ``(width, height)`` of the output in pixels.
        R: (3, 3) world -> camera matrix (identity if None); ``X_cam = R @ X + t``, applied to
            every mesh.  Camera frame: x right, y down, z forward.
        t: (3,) translation in metres (zero if None).
        background: (H, W, 3) uint8 RGB under the meshes (black if None).
        colors: one (r, g, b) in [0, 1] per mesh (default :func:`default_colors`).
        alpha: opacity of the meshes over the background, in [0, 1].
        device: torch device to compute on; default: the device of the first non-CPU vertex or
            face tensor, else CUDA when available, else CPU.
    Returns:
        :class:`RenderOutput` (numpy arrays).
    Raises:
        ValueError: on malformed inputs.
    """
    if isinstance(meshes, (str, bytes)) or not isinstance(meshes, Sequence):
        raise ValueError("meshes must be a sequence of (vertices, faces) pairs")
    if len(meshes) > np.iinfo(np.int16).max:
        raise ValueError(f"at most {np.iinfo(np.int16).max} meshes per render; got {len(meshes)}")
    w, h = _check_image_wh(image_wh)
    k = _check_intrinsics(K)
    r = np.eye(3) if R is None else _matrix(R, (3, 3), "R")
    tt = np.zeros(3) if t is None else _matrix(t, (3,), "t")
    bg = _check_background(background, w, h)
    cols = _check_colors(colors, len(meshes))
    a = _check_alpha(alpha)
    dev = _resolve_device(device, meshes)
    dtype = torch.float32 if dev.type == "mps" else torch.float64  # MPS has no float64

    r_t = torch.as_tensor(r, device=dev, dtype=dtype)
    t_t = torch.as_tensor(tt, device=dev, dtype=dtype)
    tris, norms, owner = [], [], []
    for i, mesh in enumerate(meshes):
        v, f = _mesh_tensors(mesh, i, dev, dtype)
        if f.shape[0] == 0:
            continue
        vc = v @ r_t.T + t_t
        tris.append(vc[f])
        norms.append(_vertex_normals(vc, f)[f])
        owner.append(torch.full((f.shape[0],), i, dtype=torch.int64, device=dev))

    rgb = np.zeros((h, w, 3), np.uint8) if bg is None else bg.copy()
    mask = np.full((h, w), -1, np.int16)
    depth = np.full((h, w), np.inf, np.float32)
    if not tris:
        return RenderOutput(rgb=rgb, mask=mask, depth=depth)

    tri_v, tri_n, src = clip_near(torch.cat(tris), torch.cat(norms), NEAR)
    mesh_of = torch.cat(owner)[src]
    frags = rasterize(tri_v, torch.as_tensor(k, device=dev, dtype=dtype), w, h, DEFAULT_MAX_PAIRS)
    if frags.pix.numel() == 0:
        return RenderOutput(rgb=rgb, mask=mask, depth=depth)

    which = mesh_of.index_select(0, frags.tri)
    k_inv = torch.as_tensor(np.linalg.inv(k), device=dev, dtype=dtype)
    shade = _intensity(frags, tri_v, tri_n, k_inv).float().mul_(255.0 * a)
    palette = torch.as_tensor(cols, device=dev, dtype=torch.float32)
    blend = bg is not None and a < 1.0
    if blend:
        under = torch.from_numpy(rgb.reshape(-1)).to(dev)  # the background (rgb is its copy)
        pix3 = frags.pix * 3
    channels = []
    for c in range(3):
        ch = palette[:, c].index_select(0, which) * shade
        if blend:
            ch.add_(under.index_select(0, pix3 + c).float(), alpha=1.0 - a)
        channels.append(ch.round_().clamp_(0, 255).to(torch.uint8))
    pix = frags.pix.cpu().numpy()
    rgb.reshape(-1, 3)[pix] = torch.stack(channels, 1).cpu().numpy()
    mask.reshape(-1)[pix] = which.to(torch.int16).cpu().numpy()
    depth.reshape(-1)[pix] = frags.depth.float().cpu().numpy()
    return RenderOutput(rgb=rgb, mask=mask, depth=depth)


def render_overlay(
    image: np.ndarray,
    meshes: Sequence[MeshInput],
    K: Any,
    R: Any = None,
    t: Any = None,
    alpha: float = 0.8,
    colors: Sequence[tuple[float, float, float]] | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Shaded meshes alpha-blended over a photo.

    Args:
        image: (H, W, 3) uint8 RGB photo; the output has its size.
        meshes, K, R, t, colors, device: as in :func:`render`.
        alpha: opacity of the meshes, in [0, 1].
    Returns:
        (H, W, 3) uint8 RGB; pixels not covered by a mesh are copied from ``image`` unchanged.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be an (H, W, 3) uint8 numpy array; got shape {shape}")
    h, w = image.shape[:2]
    return render(meshes, K, (w, h), R=R, t=t, background=image, colors=colors, alpha=alpha, device=device).rgb
