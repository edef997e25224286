"""Rotation representations: the HMR/SPIN/CLIFF 6D representation and axis-angle.

6D convention (docs/method.md §5; SPIN/CLIFF ``rot6d_to_rotmat``): the six
numbers are read as a 3x2 matrix **row by row**, so its columns are
``a1 = x[[0, 2, 4]]`` and ``a2 = x[[1, 3, 5]]``; then
``b1 = a1 / |a1|``, ``b2 = normalise(a2 - (b1 . a2) b1)``, ``b3 = b1 x b2``
and ``R = [b1 | b2 | b3]`` (columns).  :func:`rotmat_to_rot6d` is the inverse
(the first two columns of ``R``, flattened row by row).

Axis-angle vectors ``(..., 3)`` (radians, right-handed) convert with roma.

All functions take torch tensors (any leading dims, device/dtype kept);
numpy arrays are accepted and give numpy results.
"""

from __future__ import annotations

import numpy as np
import roma
import torch
import torch.nn.functional as F

from ._array import Array

__all__ = [
    "best_rotation",
    "rotation_between",
    "axis_rotation",
    "axis_angle_to_rotmat",
    "rot6d_to_rotmat",
    "rotmat_to_axis_angle",
    "rotmat_to_rot6d",
]


def _to_torch(x: Array) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        return x, False
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(a)), True


def _back(x: torch.Tensor, was_numpy: bool) -> Array:
    return x.numpy() if was_numpy else x


def rot6d_to_rotmat(x: Array) -> Array:
    """6D rotation representation (..., 6) -> rotation matrices (..., 3, 3).

    Bit-for-bit the SPIN/CLIFF operation order (``F.normalize`` with its
    default ``eps=1e-12``), so regressors trained with it decode identically.
    """
    x, was_np = _to_torch(x)
    if x.shape[-1:] != (6,):
        raise ValueError(f"x must have shape (..., 6), got {tuple(x.shape)}")
    m = x.reshape(*x.shape[:-1], 3, 2)
    a1, a2 = m[..., 0], m[..., 1]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return _back(torch.stack((b1, b2, b3), dim=-1), was_np)


def rotmat_to_rot6d(R: Array) -> Array:
    """Rotation matrices (..., 3, 3) -> 6D representation (..., 6) (first two columns, row-major)."""
    R, was_np = _to_torch(R)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape (..., 3, 3), got {tuple(R.shape)}")
    return _back(R[..., :, :2].reshape(*R.shape[:-2], 6), was_np)


def axis_angle_to_rotmat(rotvec: Array) -> Array:
    """Axis-angle vectors (..., 3) (radians) -> rotation matrices (..., 3, 3) (roma)."""
    rotvec, was_np = _to_torch(rotvec)
    if rotvec.shape[-1:] != (3,):
        raise ValueError(f"rotvec must have shape (..., 3), got {tuple(rotvec.shape)}")
    return _back(roma.rotvec_to_rotmat(rotvec), was_np)


def rotmat_to_axis_angle(R: Array) -> Array:
    """Rotation matrices (..., 3, 3) -> axis-angle vectors (..., 3), angle in [0, pi] (roma)."""
    R, was_np = _to_torch(R)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape (..., 3, 3), got {tuple(R.shape)}")
    return _back(roma.rotmat_to_rotvec(R), was_np)


def axis_rotation(axis: int, angle: np.ndarray) -> np.ndarray:
    """Rotations (..., 3, 3) by ``angle`` (..., radians, right-handed) about coordinate axis
    ``axis`` (0: x, 1: y, 2: z). numpy float64."""
    angle = np.asarray(angle, dtype=np.float64)
    c, s = np.cos(angle), np.sin(angle)
    r = np.zeros(angle.shape + (3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r[..., axis, axis] = 1.0
    r[..., i, i], r[..., j, j] = c, c
    r[..., i, j], r[..., j, i] = -s, s
    return r


def best_rotation(src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """The proper rotation ``R`` (..., 3, 3) minimising ``sum_k w_k |R src_k - dst_k|^2`` over
    vectors (..., K, 3) as given (no re-centring: centre point sets first), weights (..., K)
    >= 0 (None: ones). Kabsch's solution through roma's special Procrustes (the nearest
    rotation to ``sum_k w_k dst_k src_k^T``; reflections excluded)."""
    if w is None:
        w = torch.ones(src.shape[:-1], dtype=src.dtype, device=src.device)
    m = torch.einsum("...k,...ki,...kj->...ij", w, dst, src)
    return roma.special_procrustes(m)


def rotation_between(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """The smallest rotation turning direction ``a`` onto direction ``b`` (the "swing"; PC-HMR
    Eqs. 6-7). a, b: (..., 3), any non-zero lengths -> (..., 3, 3) with ``R a/|a| = b/|b|``.

    Angle ``atan2(|a x b|, a . b)`` (accurate near 0 and pi), axis ``(a x b) / |a x b|``, the
    matrix by roma (Rodrigues). Parallel directions (or a zero vector) give the identity;
    anti-parallel ones a half turn about an axis normal to ``a``. Why not roma alone: roma has
    no rotation-between-two-vectors, and the anti-parallel case needs this axis choice."""
    an = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)
    bn = b / b.norm(dim=-1, keepdim=True).clamp_min(eps)
    cross = torch.cross(an, bn, dim=-1)
    s = cross.norm(dim=-1)
    c = (an * bn).sum(-1)
    theta = torch.atan2(s, c)
    tiny = s < 1e-9
    axis = cross / s.clamp_min(1e-30)[..., None]
    # anti-parallel: any unit axis normal to a (a x e, e the basis vector least aligned with a)
    e = torch.zeros_like(an)
    e.scatter_(-1, an.abs().argmin(-1, keepdim=True), 1.0)
    perp = torch.cross(an, e, dim=-1)
    perp = perp / perp.norm(dim=-1, keepdim=True).clamp_min(eps)
    anti = tiny & (c < 0)
    axis = torch.where(tiny[..., None], torch.where(anti[..., None], perp, torch.zeros_like(axis)), axis)
    theta = torch.where(tiny & ~anti, torch.zeros_like(theta), theta)
    return roma.rotvec_to_rotmat(axis * theta[..., None])
