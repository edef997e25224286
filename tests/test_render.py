"""hmrcli.render: silhouettes, depth, occlusion, near-plane clipping, camera transforms, shading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hmrcli.render import (
    AMBIENT,
    BODY_COLOR,
    DIFFUSE,
    PALETTE,
    RenderOutput,
    render,
    render_overlay,
)
from hmrcli.render.raster import clip_near, rasterize

W, H = 64, 48
MARGIN = 1e-6  # pixels whose centre is closer than this to a silhouette edge are not compared


def intrinsics(f: float = 50.0, cx: float = 31.7, cy: float = 23.3, fy: float | None = None) -> np.ndarray:
    return np.array([[f, 0.0, cx], [0.0, f if fy is None else fy, cy], [0.0, 0.0, 1.0]])


def quad(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A planar quad (4, 3), corners in order, as two triangles."""
    return np.asarray(corners, dtype=np.float64), np.array([[0, 1, 2], [0, 2, 3]])


def rect(x0: float, x1: float, y0: float, y1: float, z: float) -> tuple[np.ndarray, np.ndarray]:
    return quad(np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]]))


def pixel_grid(w: int = W, h: int = H) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (u, v), each (H, W): pixel (row i, col j) is at (j, i)."""
    return np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    p = points @ K.T
    return p[:, :2] / p[:, 2:]


def analytic_triangle(tri: np.ndarray, K: np.ndarray, w: int = W, h: int = H) -> tuple[np.ndarray, np.ndarray]:
    """(inside, reliable) masks for one camera-frame triangle in front of the camera:
    inside = pixel centre in the projected triangle; reliable = farther than MARGIN from every
    edge line."""
    uv = project(tri, K)
    u, v = pixel_grid(w, h)
    dists = []
    for i in range(3):
        a, b = uv[i], uv[(i + 1) % 3]
        e = (b[0] - a[0]) * (v - a[1]) - (b[1] - a[1]) * (u - a[0])
        dists.append(e / np.hypot(*(b - a)))
    d = np.stack(dists)
    inside = (d >= 0).all(0) | (d <= 0).all(0)
    return inside, (np.abs(d) > MARGIN).all(0)


def plane_depth(tri: np.ndarray, K: np.ndarray, w: int = W, h: int = H) -> np.ndarray:
    """Camera-frame z where each pixel's ray meets the plane of `tri`."""
    u, v = pixel_grid(w, h)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T  # z component == 1
    n = np.cross(tri[1] - tri[0], tri[2] - tri[0])
    return (n @ tri[0]) / (rays @ n)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# -- silhouettes -------------------------------------------------------------------------------


def test_output_types_and_shapes():
    out = render([rect(-0.3, 0.5, -0.2, 0.4, 2.0)], intrinsics(), (W, H), device="cpu")
    assert isinstance(out, RenderOutput)
    assert out.rgb.shape == (H, W, 3) and out.rgb.dtype == np.uint8
    assert out.mask.shape == (H, W) and out.mask.dtype == np.int16
    assert out.depth.shape == (H, W) and out.depth.dtype == np.float32
    assert set(np.unique(out.mask)) == {-1, 0}
    assert np.isinf(out.depth[out.mask == -1]).all() and (out.depth[out.mask == -1] > 0).all()


def test_rectangle_silhouette_is_pixel_exact():
    K = intrinsics()
    x0, x1, y0, y1, z = -0.3, 0.5, -0.2, 0.4, 2.0
    out = render([rect(x0, x1, y0, y1, z)], K, (W, H), device="cpu")
    u, v = pixel_grid()
    # u = f x / z + cx: columns 24.2 .. 44.2 -> 25..44; rows 18.3 .. 33.3 -> 19..33
    expected = (u >= 50 * x0 / z + 31.7) & (u <= 50 * x1 / z + 31.7) & (v >= 50 * y0 / z + 23.3) & (v <= 50 * y1 / z + 23.3)
    assert expected.sum() == 20 * 15
    np.testing.assert_array_equal(out.mask >= 0, expected)  # no crack along the shared diagonal
    np.testing.assert_allclose(out.depth[expected], z, rtol=1e-6)


def test_pixel_centre_convention():
    # A tiny triangle around (u, v) = (10.3, 6.8), containing the centre (10, 7) of pixel
    # (row 7, col 10) = (round(v), round(u)) and no other pixel centre, covers that pixel only.
    K = intrinsics(f=100.0, cx=0.0, cy=0.0)
    z = 1.0
    c = np.array([10.3, 6.8])
    pts = c + np.array([[-0.45, -0.3], [0.45, -0.3], [-0.45, 0.45]])
    verts = np.concatenate([pts / 100.0 * z, np.full((3, 1), z)], 1)
    out = render([(verts, np.array([[0, 1, 2]]))], K, (W, H), device="cpu")
    assert list(zip(*np.nonzero(out.mask >= 0))) == [(7, 10)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.floats(-1.0, 1.0), min_size=6, max_size=6),
    st.lists(st.floats(0.5, 4.0), min_size=3, max_size=3),
    st.floats(30.0, 80.0),
)
def test_triangle_silhouette_and_depth_match_analytic(xy, zs, f):
    # vertices (x z, y z, z): normalised image coordinates xy in [-1, 1], depth z
    tri = np.array([[xy[2 * i] * zs[i], xy[2 * i + 1] * zs[i], zs[i]] for i in range(3)])
    K = intrinsics(f=f)
    uv = project(tri, K)
    e1, e2 = uv[1] - uv[0], uv[2] - uv[0]
    area = abs(e1[0] * e2[1] - e1[1] * e2[0])
    out = render([(tri, np.array([[0, 1, 2]]))], K, (W, H), device="cpu")
    if area < 1e-9:  # degenerate in the image: nothing to cover
        assert (out.mask == -1).all()
        return
    inside, reliable = analytic_triangle(tri, K)
    np.testing.assert_array_equal((out.mask >= 0)[reliable], inside[reliable])
    drawn = out.mask >= 0
    np.testing.assert_allclose(out.depth[drawn], plane_depth(tri, K)[drawn], rtol=1e-5)


def test_depth_is_perspective_correct_on_slanted_plane():
    # A floor-like plane going from 1 m to 6 m deep: depth varies non-linearly in the image.
    K = intrinsics(f=60.0, cx=31.5, cy=10.5)
    corners = np.array([[-2.0, 1.0, 1.0], [2.0, 1.0, 1.0], [2.0, 1.5, 6.0], [-2.0, 1.5, 6.0]])
    out = render([quad(corners)], K, (W, H), device="cpu")
    drawn = out.mask >= 0
    assert drawn.sum() > 500
    expected = plane_depth(corners[:3], K)
    np.testing.assert_allclose(out.depth[drawn], expected[drawn], rtol=1e-6)
    assert out.depth[drawn].max() / out.depth[drawn].min() > 3
    # screen-linear interpolation of z would be off by far more than this tolerance
    col = out.depth[:, 32]
    rows = np.nonzero(np.isfinite(col))[0]
    mid = col[rows[len(rows) // 2]]
    assert abs(mid - (col[rows[0]] + col[rows[-1]]) / 2) > 0.3


def test_mesh_with_edges_through_pixel_centres_has_no_cracks():
    # A bumpy grid mesh whose vertices all project onto pixel centres (so many edges pass
    # exactly through pixel centres): its whole image rectangle is covered, without holes.
    K = intrinsics(f=40.0, cx=30.0, cy=20.0)
    rng = np.random.default_rng(2)
    us, vs = np.arange(6, 55, 4.0), np.arange(5, 42, 3.0)
    uu, vv = np.meshgrid(us, vs)
    z = rng.uniform(1.5, 2.5, size=uu.shape)
    verts = np.stack([(uu - 30.0) / 40.0 * z, (vv - 20.0) / 40.0 * z, z], -1).reshape(-1, 3)
    nx = len(us)
    faces = []
    for j in range(len(vs) - 1):
        for i in range(nx - 1):
            a, b, c, d = j * nx + i, j * nx + i + 1, (j + 1) * nx + i + 1, (j + 1) * nx + i
            faces += [[a, b, c], [a, c, d]] if (i + j) % 2 else [[a, b, d], [b, c, d]]
    out = render([(verts, np.array(faces))], K, (W, H), device="cpu")
    u, v = pixel_grid()
    expected = (u >= us[0]) & (u <= us[-1]) & (v >= vs[0]) & (v <= vs[-1])
    np.testing.assert_array_equal(out.mask >= 0, expected)


def test_winding_does_not_matter():
    K = intrinsics()
    v, f = rect(-0.3, 0.5, -0.2, 0.4, 2.0)
    a = render([(v, f)], K, (W, H), device="cpu")
    b = render([(v, f[:, ::-1].copy())], K, (W, H), device="cpu")
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.rgb, b.rgb)


# -- occlusion, several meshes, background -----------------------------------------------------


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_mesh_wins(near_first):
    K = intrinsics()
    far = rect(-0.6, 0.2, -0.4, 0.3, 3.0)
    near = rect(-0.2, 0.6, -0.2, 0.5, 2.0)
    meshes = [near, far] if near_first else [far, near]
    near_id = 0 if near_first else 1
    out = render(meshes, K, (W, H), device="cpu")
    only_near = render([near], K, (W, H), device="cpu")
    only_far = render([far], K, (W, H), device="cpu")
    in_near = only_near.mask >= 0
    in_far_only = (only_far.mask >= 0) & ~in_near
    assert in_near.sum() > 100 and in_far_only.sum() > 50 and ((only_far.mask >= 0) & in_near).sum() > 50
    assert (out.mask[in_near] == near_id).all()
    assert (out.mask[in_far_only] == 1 - near_id).all()
    assert (out.mask[(only_far.mask < 0) & ~in_near] == -1).all()
    np.testing.assert_allclose(out.depth[in_near], 2.0, rtol=1e-6)
    np.testing.assert_allclose(out.depth[in_far_only], 3.0, rtol=1e-6)


def test_interpenetrating_planes_split_by_depth():
    # Two planes crossing each other: each pixel shows the one with the smaller depth there.
    K = intrinsics()
    a = quad(np.array([[-1.0, -1.0, 1.5], [1.0, -1.0, 3.5], [1.0, 1.0, 3.5], [-1.0, 1.0, 1.5]]))
    b = quad(np.array([[-1.0, -1.0, 3.5], [1.0, -1.0, 1.5], [1.0, 1.0, 1.5], [-1.0, 1.0, 3.5]]))
    out = render([a, b], K, (W, H), device="cpu")
    da, db = plane_depth(a[0][:3], K), plane_depth(b[0][:3], K)
    drawn = out.mask >= 0
    clear = drawn & (np.abs(da - db) > 1e-6)
    np.testing.assert_array_equal(out.mask[clear], np.where(da < db, 0, 1)[clear])
    np.testing.assert_allclose(out.depth[drawn], np.minimum(da, db)[drawn], rtol=1e-6)


def test_background_kept_exactly_outside_mask_and_blended_inside():
    rng = np.random.default_rng(0)
    bg = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    K = intrinsics()
    meshes = [rect(-0.3, 0.5, -0.2, 0.4, 2.0)]
    opaque = render(meshes, K, (W, H), background=bg, device="cpu")
    half = render(meshes, K, (W, H), background=bg, alpha=0.5, device="cpu")
    off = opaque.mask < 0
    np.testing.assert_array_equal(opaque.rgb[off], bg[off])
    np.testing.assert_array_equal(half.rgb[off], bg[off])
    on = ~off
    blend = 0.5 * opaque.rgb[on].astype(float) + 0.5 * bg[on]
    assert np.abs(half.rgb[on] - blend).max() <= 1.0
    assert bg.sum() == np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8).sum()  # input untouched
    np.testing.assert_array_equal(render_overlay(bg, meshes, K, alpha=0.5, device="cpu"), half.rgb)
    flipped = bg[:, ::-1, ::-1]  # a non-contiguous view (e.g. BGR -> RGB) is fine
    out = render(meshes, K, (W, H), background=flipped, alpha=0.5, device="cpu")
    np.testing.assert_array_equal(out.rgb[off], flipped[off])
    zero = render(meshes, K, (W, H), background=bg, alpha=0.0, device="cpu")
    np.testing.assert_array_equal(zero.rgb, bg)
    np.testing.assert_array_equal(zero.mask, opaque.mask)


def test_colours_and_headlight_shading():
    # A fronto-parallel square straight ahead: at the principal point the surface faces the
    # light (the camera) head-on, so the pixel shows the full colour.
    K = intrinsics(cx=32.0, cy=24.0)
    meshes = [rect(-0.5, -0.02, -0.3, 0.3, 2.0), rect(0.02, 0.5, -0.3, 0.3, 2.0)]
    out = render([rect(-0.3, 0.3, -0.3, 0.3, 2.0)], K, (W, H), device="cpu")
    np.testing.assert_array_equal(out.rgb[24, 32], np.rint(np.array(BODY_COLOR) * 255))
    red = (1.0, 0.0, 0.0)
    two = render(meshes, K, (W, H), colors=[red, (0.0, 0.5, 1.0)], device="cpu")
    left, right = two.rgb[24][two.mask[24] == 0], two.rgb[24][two.mask[24] == 1]
    assert (left[:, 1:] == 0).all() and (left[:, 0] > 200).all()
    assert (right[:, 0] == 0).all() and (right[:, 2] >= right[:, 1]).all()
    # off-axis pixels are darker (cos < 1) but never below the ambient term
    rgb0 = out.rgb[out.mask == 0].astype(float)
    assert rgb0[:, 2].min() >= np.floor(AMBIENT * BODY_COLOR[2] * 255) and rgb0[:, 2].max() <= np.ceil(
        (AMBIENT + DIFFUSE) * BODY_COLOR[2] * 255
    )
    # mesh 1 gets the second default colour; pixel (24, 34) sees it along ray (2/50, 0, 1)
    default2 = render(meshes, K, (W, H), device="cpu")
    cos = 1.0 / np.sqrt(1.0 + (2.0 / 50.0) ** 2)
    np.testing.assert_array_equal(default2.rgb[24, 34], np.rint(np.array(PALETTE[1]) * 255 * (AMBIENT + DIFFUSE * cos)))


# -- near plane / behind the camera ------------------------------------------------------------


def test_faces_behind_camera_are_not_drawn():
    K = intrinsics()
    behind = rect(-0.5, 0.5, -0.5, 0.5, -2.0)
    out = render([behind], K, (W, H), device="cpu")
    assert (out.mask == -1).all() and np.isinf(out.depth).all()
    both = render([behind, rect(-0.1, 0.1, -0.1, 0.1, 2.0)], K, (W, H), device="cpu")
    assert set(np.unique(both.mask)) == {-1, 1}


def test_plane_crossing_the_near_plane_is_clipped():
    # A floor 1 m below the camera from 5 m behind it to 10 m ahead: only the part ahead of
    # the camera is drawn, exactly where the pixel rays hit the floor at 0 < z <= 10.
    K = intrinsics(f=30.0, cx=31.5, cy=20.0)
    corners = np.array([[-3.0, 1.0, -5.0], [3.0, 1.0, -5.0], [3.0, 1.0, 10.0], [-3.0, 1.0, 10.0]])
    out = render([quad(corners)], K, (W, H), device="cpu")
    u, v = pixel_grid()
    x, y = (u - 31.5) / 30.0, (v - 20.0) / 30.0
    with np.errstate(divide="ignore"):
        z_hit = np.where(y > 0, 1.0 / y, np.inf)
    expected = (y > 0) & (z_hit <= 10.0) & (np.abs(x * z_hit) <= 3.0)
    reliable = (np.abs(z_hit - 10.0) > 1e-6) & (np.abs(np.abs(x * z_hit) - 3.0) > 1e-6)
    assert expected.sum() > 300
    np.testing.assert_array_equal((out.mask >= 0)[reliable], expected[reliable])
    drawn = out.mask >= 0
    np.testing.assert_allclose(out.depth[drawn], z_hit[drawn], rtol=1e-6)
    assert (out.depth[drawn] > 1e-3).all()


def test_clip_near_keeps_only_the_front_part():
    tri = torch.tensor([[[0.0, 0.0, 2.0], [1.0, 0.0, -2.0], [0.0, 1.0, -2.0]]], dtype=torch.float64)  # one vertex in front
    attrs = tri.clone()
    v, a, src = clip_near(tri, attrs, near=1e-3)
    assert v.shape == (1, 3, 3) and src.tolist() == [0]
    assert (v[..., 2] >= 1e-3).all()
    torch.testing.assert_close(v, a)  # attributes interpolated like positions
    tri2 = torch.tensor([[[0.0, 0.0, -2.0], [1.0, 0.0, 2.0], [0.0, 1.0, 2.0]]], dtype=torch.float64)  # two in front
    v2, _, src2 = clip_near(tri2, tri2.clone(), near=1e-3)
    assert v2.shape == (2, 3, 3) and src2.tolist() == [0, 0]
    assert (v2[..., 2] >= 1e-3).all()
    v3, _, _ = clip_near(-tri2, tri2.clone(), near=1e-3)  # one in front after negation
    assert v3.shape == (1, 3, 3)


def test_triangle_covering_the_whole_image_close_to_the_camera():
    K = intrinsics(f=500.0, cx=127.5, cy=127.5)
    z = 0.01
    tri = np.array([[-1.0, -1.0, z], [3.0, -1.0, z], [-1.0, 3.0, z]])
    out = render([(tri, np.array([[0, 1, 2]]))], K, (256, 256), device="cpu")
    assert (out.mask == 0).all()
    np.testing.assert_allclose(out.depth, z, rtol=1e-6)


# -- camera transform, chunking, inputs ---------------------------------------------------------


def test_rotation_and_translation_applied_like_pretransformed_vertices():
    rng = np.random.default_rng(3)
    body = rng.normal(size=(60, 3)) * 0.3
    faces = rng.integers(0, 60, size=(80, 3))
    R = random_rotation(rng)
    t = np.array([0.1, -0.05, 3.0])
    K = intrinsics()
    a = render([(body, faces)], K, (W, H), R=R, t=t, device="cpu")
    b = render([(body @ R.T + t, faces)], K, (W, H), device="cpu")
    assert (a.mask >= 0).sum() > 200
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.depth, b.depth, rtol=1e-6)
    assert np.abs(a.rgb.astype(int) - b.rgb).max() <= 1
    # torch inputs, float32 vertices and int32 faces give the same picture
    c = render(
        [(torch.as_tensor(body), torch.as_tensor(faces, dtype=torch.int32))],
        torch.as_tensor(K),
        (W, H),
        R=torch.as_tensor(R),
        t=torch.as_tensor(t),
        device="cpu",
    )
    np.testing.assert_array_equal(a.mask, c.mask)


def test_chunked_rasterization_matches_unchunked():
    rng = np.random.default_rng(5)
    verts = torch.as_tensor(rng.normal(size=(300, 3, 3)) * 0.4 + np.array([0.0, 0.0, 3.0]))
    K = torch.as_tensor(intrinsics())
    big = rasterize(verts, K, W, H)
    small = rasterize(verts, K, W, H, max_pairs=1)  # raised to one image row at a time
    assert big.pix.numel() > 500
    for x, y in zip((big.pix, big.tri, big.depth), (small.pix, small.tri, small.depth)):
        torch.testing.assert_close(x, y)


def test_interpolated_positions_lie_on_the_pixel_rays():
    # Perspective-correct interpolation of the camera-frame vertices gives, at each covered
    # pixel, the 3D point seen there: its z is the depth and it projects onto the pixel centre.
    rng = np.random.default_rng(6)
    verts = torch.as_tensor(rng.normal(size=(40, 3, 3)) * 0.5 + np.array([0.0, 0.0, 3.0]))
    K = torch.as_tensor(intrinsics())
    frags = rasterize(verts, K, W, H)
    points = frags.interpolate(verts)
    torch.testing.assert_close(points[:, 2], frags.depth)
    uv = (points / points[:, 2:]) @ K.T
    torch.testing.assert_close(uv[:, 0], (frags.pix % W).double())
    torch.testing.assert_close(uv[:, 1], (frags.pix // W).double())
    ones = frags.interpolate(torch.ones(40, 3, 1, dtype=torch.float64))
    torch.testing.assert_close(ones, torch.ones_like(ones))


def test_empty_inputs():
    bg = np.full((H, W, 3), 7, np.uint8)
    K = intrinsics()
    for meshes in ([], [(np.zeros((0, 3)), np.zeros((0, 3), np.int64))], [rect(5, 6, 5, 6, 2.0)]):
        out = render(meshes, K, (W, H), background=bg, device="cpu")
        np.testing.assert_array_equal(out.rgb, bg)
        assert (out.mask == -1).all() and np.isinf(out.depth).all()
    assert (render([], K, (W, H), device="cpu").rgb == 0).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"K": np.eye(2)}, "K must have shape"),
        ({"K": np.array([[50.0, 0, 30], [0, 50, 20], [0, 1, 1]])}, "last row"),
        ({"K": np.diag([0.0, 50.0, 1.0])}, "zero focal"),
        ({"image_wh": (64,)}, "image_wh"),
        ({"image_wh": (64, 0)}, "positive integer"),
        ({"image_wh": (64.0, 48)}, "positive integer"),
        ({"R": np.eye(4)}, "R must have shape"),
        ({"t": np.zeros((1, 3))}, "t must have shape"),
        ({"t": np.array([0.0, np.nan, 0.0])}, "t must be finite"),
        ({"background": np.zeros((H, W, 3), np.float32)}, "uint8"),
        ({"background": np.zeros((W, H, 3), np.uint8)}, "background must have shape"),
        ({"colors": []}, "colors has 0 entries"),
        ({"colors": [(1.0, 2.0, 0.0)]}, r"colors\[0\]"),
        ({"alpha": 1.5}, "alpha"),
        ({"meshes": [(np.zeros((4, 2)), np.zeros((1, 3), np.int64))]}, r"vertices must have shape \(V, 3\)"),
        ({"meshes": [(np.zeros((4, 3)), np.zeros((1, 3)))]}, "integer vertex indices"),
        ({"meshes": [(np.zeros((4, 3), bool), np.zeros((1, 3), np.int64))]}, "real numbers"),
        ({"device": "cuda:0" if not torch.cuda.is_available() else "no-such-device"}, "device"),
        ({"meshes": [(np.zeros((4, 3)), np.array([[0, 1, 4]]))]}, "outside"),
        ({"meshes": [(np.full((4, 3), np.inf), np.array([[0, 1, 2]]))]}, "finite"),
        ({"meshes": [np.zeros((4, 3))]}, "pair"),
        ({"meshes": "mesh"}, "sequence"),
    ],
)
def test_invalid_inputs_raise_value_error(kwargs, match):
    args = {"meshes": [rect(-0.3, 0.5, -0.2, 0.4, 2.0)], "K": intrinsics(), "image_wh": (W, H), "device": "cpu"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        render(**args)


def test_render_overlay_rejects_bad_image():
    with pytest.raises(ValueError, match="image"):
        render_overlay(np.zeros((H, W), np.uint8), [rect(-0.3, 0.5, -0.2, 0.4, 2.0)], intrinsics(), device="cpu")


# -- the shipped body model ---------------------------------------------------------------------


def test_free_body_model_at_three_metres():
    from hmrcli.body import load_body_model

    body = load_body_model("free")
    verts = body(torch.zeros(1, 24, 3, dtype=torch.float64)).vertices[0]
    R = np.diag([1.0, -1.0, -1.0])  # body +Y up, +Z facing -> camera y down, facing the camera
    t = np.array([0.0, 0.0, 3.0])
    w, h = 320, 240
    K = np.array([[300.0, 0.0, 159.5], [0.0, 300.0, 119.5], [0.0, 0.0, 1.0]])
    out = render([(verts, body.faces)], K, (w, h), R=R, t=t, device="cpu")
    ys, xs = np.nonzero(out.mask == 0)
    assert len(xs) > 1000
    uv = project(verts.numpy() @ R.T + t, K)
    np.testing.assert_allclose([xs.min(), xs.max(), ys.min(), ys.max()],
                               [uv[:, 0].min(), uv[:, 0].max(), uv[:, 1].min(), uv[:, 1].max()], atol=2.0)
    d = out.depth[out.mask == 0]
    assert d.min() > 3.0 - 0.3 and d.max() < 3.0 + 0.3
    assert out.rgb[out.mask == -1].max() == 0 and out.rgb[out.mask == 0].min(0).max() > 0


# -- CUDA ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    from hmrcli.body import load_body_model

    body = load_body_model("free")
    verts = body(torch.zeros(1, 24, 3, dtype=torch.float64)).vertices[0]
    R = np.diag([1.0, -1.0, -1.0])
    t = np.array([0.05, 0.1, 2.5])
    K = np.array([[600.0, 0.0, 255.5], [0.0, 600.0, 255.5], [0.0, 0.0, 1.0]])
    meshes = [(verts, body.faces), (verts + torch.tensor([0.3, 0.0, 0.5], dtype=torch.float64), body.faces)]
    bg = np.random.default_rng(1).integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
    cpu = render(meshes, K, (512, 512), R=R, t=t, background=bg, alpha=0.8, device="cpu")
    gpu = render(meshes, K, (512, 512), R=R, t=t, background=bg, alpha=0.8, device="cuda")
    auto = render([(verts.cuda(), torch.as_tensor(body.faces).cuda())], K, (512, 512), R=R, t=t)
    assert (auto.mask == 0).sum() > 1000
    assert (gpu.mask != cpu.mask).mean() < 1e-4
    same = (gpu.mask == cpu.mask) & (cpu.mask >= 0)
    np.testing.assert_allclose(gpu.depth[same], cpu.depth[same], rtol=1e-5)
    assert np.abs(gpu.rgb[same].astype(int) - cpu.rgb[same]).max() <= 1
