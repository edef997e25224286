"""Vectorised z-buffer triangle rasterizer in plain torch (CPU or CUDA, no graphics stack).

Conventions (OpenCV pinhole, as in :mod:`hmrcli.geometry`):

* Camera frame: x right, y down, z forward, metres.  A camera-frame point ``X`` projects to
  pixel ``(u, v) = ((K X)_0 / z, (K X)_1 / z)``; the third row of ``K`` must be ``(0, 0, 1)``.
* Pixel ``(u, v) = (0, 0)`` is the *centre* of the top-left pixel: pixel (row ``i``, column
  ``j``) is sampled at its centre ``(u, v) = (j, i)``, so a point projecting to ``(u, v)`` lies
  in pixel ``(round(v), round(u))``.  A pixel is covered by a triangle when its centre lies
  inside the projected triangle or on its boundary (to within 1e-9 of the triangle's
  barycentric range, so that no pixel centre on an edge shared by two triangles is lost).
  There is no anti-aliasing: coverage is binary.
* Near plane: geometry with ``z <= near`` is not drawn.  Triangles that cross the plane are
  *clipped* against it (as OpenGL does; :func:`clip_near`): a triangle with one vertex in front
  becomes one smaller triangle, one with two vertices in front becomes two; per-vertex
  attributes are interpolated linearly in camera space along the cut edges.  Triangles
  entirely behind the plane are dropped.
* Depth is perspective-correct: screen-space barycentrics ``b_i`` interpolate ``1 / z``
  linearly, so ``z = 1 / sum_i(b_i / z_i)``; other attributes use the perspective-correct
  weights ``lambda_i = (b_i / z_i) / sum_j(b_j / z_j)`` (:meth:`Fragments.interpolate`).  The
  depth reported is camera-frame ``z`` (not the distance to the camera centre).
* Triangles are two-sided (no back-face culling; winding does not matter).  Where two
  surfaces are at exactly the same float32 depth, the triangle with the lower index wins, so
  results are deterministic and the same on CPU and CUDA.

Algorithm (scanline spans, no per-pixel inside test): the triangle set-up (projection,
barycentric gradients, the screen-space plane of ``1/z``) is done per triangle in the input
dtype (float64 recommended).  Each (triangle, image row) pair gets the span of pixel centres
inside the triangle from the three edge inequalities ``b_i >= 0``, each linear in x.  The spans
are expanded to fragments with ``repeat_interleave``; each fragment's ``1/z`` is one
multiply-add.  Fragments are reduced per pixel with ``scatter_reduce('amin')`` on an int64 key
``(float32 depth bits << 32) | triangle``: positive float32 bit patterns order like the values,
so one pass yields the nearest depth *and* the visible triangle.  Rows and fragments are
processed ``max_pairs`` at a time, so memory stays bounded whatever the geometry (e.g. one
triangle near the camera covering the whole image).  Per-fragment gathers use 1-D
``index_select`` on per-triangle columns (much faster on CPU than row gathers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["DEFAULT_MAX_PAIRS", "DEFAULT_NEAR", "Fragments", "clip_near", "rasterize"]

DEFAULT_NEAR = 1e-3
"""Default near-plane distance (metres)."""

DEFAULT_MAX_PAIRS = 1 << 20
"""Default number of (triangle, row) spans or fragments processed at once (~100 MB of temporaries)."""

_INSIDE_TOL = 1e-9  # barycentric tolerance: pixel centres on a shared edge are covered by both
_NO_HIT = torch.iinfo(torch.int64).max


@dataclass
class _Setup:
    """Per-triangle screen-space set-up, one 1-D column (T,) per quantity.

    Barycentrics: ``b_i(x, y) = A[i] (x - u0) + B[i] (y - v0) + [i == 0]``;
    ``1/z(x, y) = iz[0] + iz_dx (x - u0) + iz_dy (y - v0)``.
    """

    A: torch.Tensor  # (3, T)
    B: torch.Tensor  # (3, T)
    u0: torch.Tensor
    v0: torch.Tensor
    iz: torch.Tensor  # (3, T) 1 / z of each vertex
    iz_dx: torch.Tensor
    iz_dy: torch.Tensor


@dataclass
class Fragments:
    """The visible surface at each covered pixel.

    Attributes:
        pix: (P,) int64 flat pixel index ``row * width + col`` of every covered pixel (sorted).
        tri: (P,) int64 index of the visible triangle (into the rasterized triangle array).
        depth: (P,) camera-frame z of the visible point, metres (dtype of the vertices).
        width: image width in pixels (to turn ``pix`` into columns and rows).
    """

    pix: torch.Tensor
    tri: torch.Tensor
    depth: torch.Tensor
    width: int
    _setup: _Setup = field(repr=False)
    _dxy: tuple[torch.Tensor, torch.Tensor] = field(repr=False)

    def interpolate(self, values: torch.Tensor) -> torch.Tensor:
        """Perspective-correct interpolation of per-vertex values at the visible points.

        Args:
            values: (T, 3, C) values at the three vertices of every rasterized triangle.
        Returns:
            (P, C) ``sum_i lambda_i values[tri, i]`` with the perspective-correct weights
            ``lambda_i = (b_i / z_i) / sum_j (b_j / z_j)``.
        """
        s = self._setup
        dx, dy = self._dxy
        v = values.to(s.A.dtype)
        # sum_i b_i v_i / z_i is affine in (x, y): coefficients per triangle, then per pixel.
        vz = v * s.iz.T[:, :, None]  # (T, 3, C)
        c0 = vz[:, 0]
        cx = s.A[0, :, None] * vz[:, 0] + s.A[1, :, None] * vz[:, 1] + s.A[2, :, None] * vz[:, 2]
        cy = s.B[0, :, None] * vz[:, 0] + s.B[1, :, None] * vz[:, 1] + s.B[2, :, None] * vz[:, 2]
        out = []
        for c in range(v.shape[2]):
            col = c0[:, c].index_select(0, self.tri)
            col = torch.addcmul(col, cx[:, c].index_select(0, self.tri), dx)
            out.append(torch.addcmul(col, cy[:, c].index_select(0, self.tri), dy) * self.depth)
        return torch.stack(out, 1)


def clip_near(
    verts: torch.Tensor, attrs: torch.Tensor, near: float = DEFAULT_NEAR
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clip camera-frame triangles against the plane ``z = near``.

    Args:
        verts: (T, 3, 3) triangle vertices in the camera frame (metres).
        attrs: (T, 3, A) per-vertex attributes, interpolated linearly along cut edges.
        near: near-plane distance (metres, > 0).
    Returns:
        ``(verts, attrs, source)``: the clipped triangles (T', 3, 3), their attributes
        (T', 3, A) and, for each output triangle, the index of the input triangle it came from
        (T',).  Winding is preserved; output vertices have ``z >= near``.  Triangles entirely in
        front keep their order and come first.
    """
    n_tri = verts.shape[0]
    device = verts.device
    src = torch.arange(n_tri, device=device)
    inside = verts[..., 2] > near
    n_in = inside.sum(1)
    full = n_in == 3
    if bool(full.all()):
        return verts, attrs, src
    out_v, out_a, out_s = [verts[full]], [attrs[full]], [src[full]]
    ar3 = torch.arange(3, device=device)

    def rotate(idx: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Cyclic rotation (keeps the winding) that puts vertex `first` at position 0.
        order = (first[:, None] + ar3) % 3
        v = verts[idx].gather(1, order[..., None].expand(-1, -1, verts.shape[2]))
        a = attrs[idx].gather(1, order[..., None].expand(-1, -1, attrs.shape[2]))
        return v, a

    def cut(v: torch.Tensor, a: torch.Tensor, i: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Point on edge v_i -> v_j where z == near (v_i and v_j on opposite sides).
        s = ((near - v[:, i, 2]) / (v[:, j, 2] - v[:, i, 2]))[:, None]
        p = v[:, i] + s * (v[:, j] - v[:, i])
        p[:, 2] = near
        return p, a[:, i] + s * (a[:, j] - a[:, i])

    one = (n_in == 1).nonzero().squeeze(1)
    if one.numel():
        # v0 in front; v1, v2 behind -> triangle (v0, cut01, cut02).
        v, a = rotate(one, inside[one].to(torch.int8).argmax(1))
        p1, a1 = cut(v, a, 0, 1)
        p2, a2 = cut(v, a, 0, 2)
        out_v.append(torch.stack([v[:, 0], p1, p2], 1))
        out_a.append(torch.stack([a[:, 0], a1, a2], 1))
        out_s.append(one)
    two = (n_in == 2).nonzero().squeeze(1)
    if two.numel():
        # v0 behind; v1, v2 in front -> quad (cut01, v1, v2, cut02) -> two triangles.
        v, a = rotate(two, (~inside[two]).to(torch.int8).argmax(1))
        p1, a1 = cut(v, a, 0, 1)
        p2, a2 = cut(v, a, 0, 2)
        out_v += [torch.stack([p1, v[:, 1], v[:, 2]], 1), torch.stack([p1, v[:, 2], p2], 1)]
        out_a += [torch.stack([a1, a[:, 1], a[:, 2]], 1), torch.stack([a1, a[:, 2], a2], 1)]
        out_s += [two, two]
    return torch.cat(out_v), torch.cat(out_a), torch.cat(out_s)


def _setup(verts: torch.Tensor, K: torch.Tensor) -> tuple[_Setup, torch.Tensor, torch.Tensor]:
    """Project triangles and compute their screen-space set-up.

    Returns ``(setup, uv, area2)``: uv (T, 3, 2) projected vertices (pixels) and area2 (T,)
    twice the signed projected area (pixels^2).
    """
    z = verts[..., 2]
    uv = (verts[..., :2] / z[..., None]) @ K[:2, :2].T + K[:2, 2]
    u, v = uv[..., 0].T, uv[..., 1].T  # (3, T)
    area2 = (u[1] - u[0]) * (v[2] - v[0]) - (v[1] - v[0]) * (u[2] - u[0])
    safe = torch.where(area2 == 0, torch.ones_like(area2), area2)
    # b_i * area2 is the edge function of the edge (j, k) opposite vertex i.
    uj, vj = u.roll(-1, 0), v.roll(-1, 0)  # vertex (i + 1) % 3
    uk, vk = u.roll(-2, 0), v.roll(-2, 0)  # vertex (i + 2) % 3
    A = (vj - vk) / safe
    B = (uk - uj) / safe
    iz = (1.0 / z).T.contiguous()
    iz_dx = A[0] * iz[0] + A[1] * iz[1] + A[2] * iz[2]
    iz_dy = B[0] * iz[0] + B[1] * iz[1] + B[2] * iz[2]
    setup = _Setup(A=A, B=B, u0=u[0].contiguous(), v0=v[0].contiguous(), iz=iz, iz_dx=iz_dx, iz_dy=iz_dy)
    return setup, uv, area2


def _chunks(counts: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Split ``range(len(counts))`` into consecutive ranges whose counts sum to <= budget
    (a single entry larger than the budget gets a range of its own)."""
    ends = torch.cumsum(counts, 0).cpu()
    out, s, done = [], 0, 0
    while s < len(ends):
        e = max(int(torch.searchsorted(ends, done + budget, right=True)), s + 1)
        out.append((s, e))
        done, s = int(ends[e - 1]), e
    return out


def rasterize(
    verts: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> Fragments:
    """Rasterize camera-frame triangles that lie in front of the camera.

    Args:
        verts: (T, 3, 3) triangle vertices in the camera frame (metres), all with ``z > 0``
            (clip with :func:`clip_near` first).  Floating dtype; float64 recommended (the
            set-up and the span ends are computed in it; per-fragment depth keys are float32).
        K: (3, 3) pinhole intrinsics in pixels, last row ``(0, 0, 1)``, same device and dtype.
        width, height: image size in pixels.
        max_pairs: maximum number of (triangle, row) spans or fragments held in memory at once
            (raised to at least ``max(width, height)``).
    Returns:
        :class:`Fragments` of the covered pixels.
    """
    device, dtype = verts.device, verts.dtype
    key = torch.full((width * height,), _NO_HIT, dtype=torch.int64, device=device)
    max_pairs = max(int(max_pairs), width, height)
    s, uv, area2 = _setup(verts, K)

    # Rows of pixel centres each triangle can cover, clamped to the image.
    lo = uv.amin(1).ceil()
    hi = uv.amax(1).floor()
    y0 = lo[:, 1].clamp(0, height)
    y1 = hi[:, 1].clamp(-1, height - 1)
    ok = (lo[:, 0] <= width - 1) & (hi[:, 0] >= 0) & (y0 <= y1) & (area2.abs() > 1e-12) & torch.isfinite(area2)
    tri = ok.nonzero().squeeze(1)
    if tri.numel():
        y0 = y0.index_select(0, tri).long()
        n_rows = y1.index_select(0, tri).long() - y0 + 1
        for a, b in _chunks(n_rows, max_pairs):
            _scan_rows(key, tri[a:b], y0[a:b], n_rows[a:b], s, width, max_pairs)

    pix = (key != _NO_HIT).nonzero().squeeze(1)
    win = key.index_select(0, pix) & 0xFFFFFFFF
    # Depth in full precision from the set-up (the key holds it rounded to float32).
    dx = (pix % width).to(dtype) - s.u0.index_select(0, win)
    dy = torch.div(pix, width, rounding_mode="floor").to(dtype) - s.v0.index_select(0, win)
    inv_depth = s.iz[0].index_select(0, win)
    inv_depth = torch.addcmul(inv_depth, s.iz_dx.index_select(0, win), dx)
    inv_depth = torch.addcmul(inv_depth, s.iz_dy.index_select(0, win), dy)
    return Fragments(pix=pix, tri=win, depth=inv_depth.reciprocal_(), width=width, _setup=s, _dxy=(dx, dy))


def _scan_rows(
    key: torch.Tensor,
    tri: torch.Tensor,
    y0: torch.Tensor,
    n_rows: torch.Tensor,
    s: _Setup,
    width: int,
    max_pairs: int,
) -> None:
    """Fold the pixels of triangles ``tri`` (rows ``y0 .. y0 + n_rows - 1``) into ``key``.

    For each (triangle, row) the covered pixel centres form one span ``[xs, xe]``: each
    barycentric ``b_i = A_i (x - u0) + B_i (y - v0) + [i == 0] >= -tol`` bounds x from one side
    (or, for an edge parallel to the row, keeps or rejects the whole row).
    """
    device, dtype = key.device, s.A.dtype
    n = int(n_rows.sum())
    ti = torch.repeat_interleave(torch.arange(tri.numel(), device=device), n_rows, output_size=n)
    y = y0.index_select(0, ti) + torch.arange(n, device=device) - (torch.cumsum(n_rows, 0) - n_rows).index_select(0, ti)
    t = tri.index_select(0, ti)
    del ti
    u0 = s.u0.index_select(0, t)
    dy = y.to(dtype) - s.v0.index_select(0, t)
    x_lo = torch.full_like(dy, -float("inf"))
    x_hi = torch.full_like(dy, float("inf"))
    never = torch.zeros_like(dy, dtype=torch.bool)
    for i in range(3):
        a = s.A[i].index_select(0, t)
        rhs = -_INSIDE_TOL - s.B[i].index_select(0, t) * dy  # b_i >= -tol  <=>  a (x - u0) >= rhs
        if i == 0:
            rhs -= 1.0
        bound = rhs / torch.where(a == 0, torch.ones_like(a), a)
        x_lo = torch.maximum(x_lo, torch.where(a > 0, bound, x_lo))
        x_hi = torch.minimum(x_hi, torch.where(a < 0, bound, x_hi))
        never |= (a == 0) & (rhs > 0)
    xs = (u0 + x_lo).ceil_().clamp_(0, width)
    xe = (u0 + x_hi).floor_().clamp_(-1, width - 1)
    keep = ((xs <= xe) & ~never).nonzero().squeeze(1)
    if keep.numel() == 0:
        return
    t, y, dy = t.index_select(0, keep), y.index_select(0, keep), dy.index_select(0, keep)
    xs, xe = xs.index_select(0, keep), xe.index_select(0, keep)
    count = (xe - xs).long() + 1
    # 1/z at the span start, and its step per pixel.
    row_diz = s.iz_dx.index_select(0, t)
    row_iz = s.iz[0].index_select(0, t)
    row_iz = torch.addcmul(row_iz, row_diz, xs - s.u0.index_select(0, t))
    row_iz = torch.addcmul(row_iz, s.iz_dy.index_select(0, t), dy)
    row_pix = y * width + xs.long()
    for a, b in _chunks(count, max_pairs):
        c = count[a:b]
        m = int(c.sum())
        first = torch.cumsum(c, 0) - c  # offset of each span's first fragment in this chunk
        r = torch.repeat_interleave(torch.arange(b - a, device=device), c, output_size=m)
        j = torch.arange(m, device=device)
        # Fragment j of span r is pixel row_pix[r] + (j - first[r]); likewise 1/z (float64).
        base_pix = (row_pix[a:b] - first).index_select(0, r)
        diz = row_diz[a:b]
        iz = torch.addcmul((row_iz[a:b] - diz * first.to(dtype)).index_select(0, r), diz.index_select(0, r), j.to(dtype))
        depth = iz.float().reciprocal_().clamp_(min=0.0)
        # Positive float32 bit patterns order like the floats: (depth bits << 32) | triangle.
        fkey = depth.view(torch.int32).to(torch.int64).bitwise_left_shift_(32).bitwise_or_(t[a:b].index_select(0, r))
        key.scatter_reduce_(0, base_pix.add_(j), fkey, reduce="amin", include_self=True)
