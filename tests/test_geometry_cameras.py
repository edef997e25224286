"""Cameras: local <-> full conversion, consistency terms, projection, weak-perspective bound."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from hmrcli import geometry as g

CROP_HW = g.crop_size("rect")


def _random_scene(n: int, seed: int, dtype=torch.float64):
    """Random image sizes, focal lengths, person boxes and full cameras (torch)."""
    gen = torch.Generator().manual_seed(seed)

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=dtype)

    wh = torch.stack([u(200, 4000, n), u(200, 4000, n)], -1)
    focal = g.default_focal(wh[:, 0], wh[:, 1]) * u(0.5, 2.0, n)
    boxes = torch.stack([u(-0.2, 1.2, n) * wh[:, 0], u(-0.2, 1.2, n) * wh[:, 1], u(20, 1500, n)], -1)
    t_full = torch.stack([u(-3, 3, n), u(-2, 2, n), u(1.5, 60, n)], -1)
    return wh, focal, boxes, t_full


# ---------------------------------------------------------------- local <-> full
@pytest.mark.parametrize("num_rois", [1, 3, 5])
def test_full_local_full_identity_float64(num_rois):
    wh, focal, boxes, t_full = _random_scene(2000, seed=1)
    rois = g.make_rois(boxes, num_rois)  # (N, M, 3)
    cams = g.full_to_local(t_full[:, None, :], rois, wh[:, None, :], focal[:, None])
    assert cams.shape == (2000, num_rois, 3)
    back = g.local_to_full(cams, rois, wh[:, None, :], focal[:, None])
    rel = (back - t_full[:, None, :]).norm(dim=-1) / t_full[:, None, :].norm(dim=-1)
    assert rel.max().item() <= 1e-6
    assert rel.max().item() <= 1e-12  # in practice exact to rounding


def test_local_full_local_identity_numpy_default_focal():
    rng = np.random.default_rng(3)
    n = 500
    wh = rng.uniform(300, 3000, (n, 2))
    boxes = np.stack([rng.uniform(0, 1, n) * wh[:, 0], rng.uniform(0, 1, n) * wh[:, 1], rng.uniform(50, 800, n)], -1)
    cams = np.stack([rng.uniform(0.3, 1.5, n), rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)], -1)
    t = g.local_to_full(cams, boxes, wh)
    assert isinstance(t, np.ndarray) and t.shape == (n, 3)
    np.testing.assert_allclose(g.full_to_local(t, boxes, wh), cams, rtol=1e-9, atol=1e-12)


def test_local_to_full_matches_formula():
    cam = np.array([0.9, 0.1, -0.2])
    box = np.array([500.0, 300.0, 250.0])
    wh = np.array([1000.0, 800.0])
    f = 1200.0
    bs = 250.0 * 0.9 + g.CLIFF_EPS
    expected = [0.1 + 2 * (500 - 500) / bs, -0.2 + 2 * (300 - 400) / bs, 2 * f / bs]
    np.testing.assert_allclose(g.local_to_full(cam, box, wh, f), expected, rtol=1e-14)


def test_full_local_float32():
    wh, focal, boxes, t_full = _random_scene(300, seed=2, dtype=torch.float32)
    rois = g.make_rois(boxes)
    cams = g.full_to_local(t_full[:, None], rois, wh[:, None], focal[:, None])
    back = g.local_to_full(cams, rois, wh[:, None], focal[:, None])
    assert back.dtype == torch.float32
    rel = (back - t_full[:, None]).norm(dim=-1) / t_full[:, None].norm(dim=-1)
    assert rel.max().item() < 1e-4


# ---------------------------------------------------------------- consistency
@pytest.mark.parametrize("form", ["paper", "code"])
def test_consistency_zero_for_one_full_camera(form):
    wh, focal, boxes, t_full = _random_scene(500, seed=4)
    rois = g.make_rois(boxes)
    cams = g.full_to_local(t_full[:, None], rois, wh[:, None], focal[:, None])
    r = g.consistency_residuals(cams, rois, wh, form=form)
    expected = (500, 5, 5) if form == "paper" else (500, 5)
    assert r.x.shape == r.y.shape == r.s.shape == expected
    for res in r:
        assert res.abs().max().item() < 1e-9
    assert g.consistency_loss(cams, rois, wh, form=form).item() < 1e-15


@pytest.mark.parametrize("form", ["paper", "code"])
@pytest.mark.parametrize("component", [0, 1, 2])
def test_consistency_grows_with_perturbation(form, component):
    wh, focal, boxes, t_full = _random_scene(64, seed=5)
    rois = g.make_rois(boxes)
    cams = g.full_to_local(t_full[:, None], rois, wh[:, None], focal[:, None])
    gen = torch.Generator().manual_seed(component)
    which = torch.randint(0, 5, (64,), generator=gen)
    sign = torch.where(torch.rand(64, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0)
    losses = []
    for mag in [0.0, 1e-3, 1e-2, 0.05, 0.1, 0.3]:
        pert = cams.clone()
        size = mag * sign * (cams[torch.arange(64), which, 0] if component == 0 else 1.0)
        pert[torch.arange(64), which, component] += size
        losses.append(g.consistency_loss(pert, rois, wh, form=form, reduction="none"))
    losses = torch.stack(losses)  # (6, 64)
    assert (losses[0] < 1e-15).all()
    assert (losses[1:] > losses[:-1]).all(), "loss must increase strictly with the perturbation"
    # a perturbed camera leaves non-zero residuals against the others
    r = g.consistency_residuals(pert, rois, wh, form="paper")
    assert (r.x.abs() + r.y.abs() + r.s.abs()).amax(dim=(-1, -2)).min() > 0


def test_paper_loss_weights_and_code_loss_formula():
    """Loss values against direct transcriptions of paper Eq. 12-13 and the authors' code."""
    rng = np.random.default_rng(7)
    b_, m = 3, 5
    wh = rng.uniform(400, 2000, (b_, 2))
    boxes = g.make_rois(np.stack([rng.uniform(100, 300, b_), rng.uniform(100, 300, b_), rng.uniform(80, 200, b_)], -1))
    cams = np.stack([rng.uniform(0.5, 1.2, (b_, m)), rng.normal(0, 0.2, (b_, m)), rng.normal(0, 0.2, (b_, m))], -1)
    cx = boxes[..., 0] - wh[:, None, 0] / 2
    cy = boxes[..., 1] - wh[:, None, 1] / 2
    bs = boxes[..., 2] * cams[..., 0] + 1e-9
    gx = cams[..., 1] + 2 * cx / bs
    gy = cams[..., 2] + 2 * cy / bs
    paper = 0.0
    for i in range(m):
        for j in range(m):
            paper += (
                0.1 * (gx[:, i] - gx[:, j]) ** 2 + 0.1 * (gy[:, i] - gy[:, j]) ** 2 + 1e-4 * (bs[:, i] - bs[:, j]) ** 2
            )
    np.testing.assert_allclose(g.consistency_loss(cams, boxes, wh, "paper"), paper.mean(), rtol=1e-12)

    # authors' camera_losses (flattened B*M rows, MSELoss = mean over rows)
    reg_x = (cams[:, :1, 1] - cams[..., 1]) - 2 * (cx / bs - cx[:, :1] / bs[:, :1])
    reg_y = (cams[:, :1, 2] - cams[..., 2]) - 2 * (cy / bs - cy[:, :1] / bs[:, :1])
    reg_s = (bs - bs[:, :1]) * 1e-4
    code = ((reg_x + reg_y) ** 2).mean() + (reg_s**2).mean()
    np.testing.assert_allclose(g.consistency_loss(cams, boxes, wh, "code"), code, rtol=1e-12)
    r = g.consistency_residuals(cams, boxes, wh, "code")
    np.testing.assert_allclose(r.x, reg_x, atol=1e-12)
    np.testing.assert_allclose(r.s * 1e-4, reg_s, atol=1e-12)


def test_consistency_bad_form():
    with pytest.raises(ValueError):
        g.consistency_residuals(np.ones((5, 3)), np.ones((5, 3)), np.ones(2), form="other")


# ---------------------------------------------------------------- projection
def test_intrinsics_and_project():
    K = g.intrinsics(torch.tensor([1000.0, 500.0]), torch.tensor([640.0, 320.0]), torch.tensor([480.0, 240.0]))
    assert K.shape == (2, 3, 3)
    torch.testing.assert_close(K[0], torch.tensor([[1000.0, 0, 320], [0, 1000, 240], [0, 0, 1]]))
    pts = torch.tensor([[[0.0, 0.0, 2.0], [1.0, -0.5, 4.0]]]).expand(2, 2, 3)
    uv = g.project(pts, K)
    torch.testing.assert_close(uv[0], torch.tensor([[320.0, 240.0], [570.0, 115.0]]))
    # R and t: rotate 90 deg about z then translate
    R = g.axis_angle_to_rotmat(torch.tensor([0.0, 0.0, np.pi / 2]))
    t = torch.tensor([0.0, 0.0, 5.0])
    uv2 = g.project(torch.tensor([[1.0, 0.0, 0.0]]), K[0], R, t)
    torch.testing.assert_close(uv2, torch.tensor([[320.0, 240.0 + 1000.0 / 5.0]]))


def test_weak_perspective_normalised_coords():
    cam = np.array([0.5, 0.2, -0.1])
    pts = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(g.weak_perspective_project(pts, cam), [[0.6, 0.95]])
    box = np.array([100.0, 200.0, 50.0])
    img = g.normalized_to_image(np.array([[0.6, 0.95]]), box)
    np.testing.assert_allclose(img, [[115.0, 223.75]])
    np.testing.assert_allclose(g.image_to_normalized(img, box), [[0.6, 0.95]])


# ---------------------------------------------------------------- weak-perspective bound
def _body_points(n_bodies: int, n_pts: int, radius: float, gen: torch.Generator) -> torch.Tensor:
    """Random points uniformly inside a ball of ``radius`` metres around each root."""
    d = torch.randn(n_bodies, n_pts, 3, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    r = radius * torch.rand(n_bodies, n_pts, 1, generator=gen, dtype=torch.float64) ** (1 / 3)
    return d * r


def _crop_errors(X, t_full, wh, focal, num_rois=5):
    """Crop-pixel positions of body points: perspective+affine vs local weak perspective."""
    K = g.intrinsics(focal, wh[:, 0], wh[:, 1])
    p = g.project(X, K, t=t_full)  # (N, P, 2) full-image pixels
    lo, hi = p.amin(dim=1), p.amax(dim=1)
    boxes = g.box_from_xyxy(torch.cat([lo, hi], -1), "rect")
    rois = g.make_rois(boxes, num_rois)  # (N, M, 3)
    aff = g.crop_affine(rois, CROP_HW)  # (N, M, 2, 3)
    p_crop = g.map_points(p[:, None], aff)  # (N, M, P, 2)
    cams = g.full_to_local(t_full[:, None], rois, wh[:, None], focal[:, None])
    q_crop = g.normalized_to_crop_pixels(g.weak_perspective_project(X[:, None], cams), CROP_HW)
    err = (q_crop - p_crop).norm(dim=-1)  # (N, M, P)
    k = CROP_HW[0] / rois[..., 2]  # crop px per image px
    c = wh / 2
    return err, p, k, c


def test_weak_perspective_error_formula_and_bound():
    """|q - p| = k |p - c| |X_z| / tZ exactly; bounded by k |p - c| d / tZ and the 3D bound."""
    gen = torch.Generator().manual_seed(11)
    n, radius = 400, 1.0
    wh = 300 + 3000 * torch.rand(n, 2, generator=gen, dtype=torch.float64)
    focal = g.default_focal(wh[:, 0], wh[:, 1]) * (0.5 + 1.5 * torch.rand(n, generator=gen, dtype=torch.float64))
    tz = 3.0 + 30.0 * torch.rand(n, generator=gen, dtype=torch.float64)
    txy = (torch.rand(n, 2, generator=gen, dtype=torch.float64) - 0.5) * tz[:, None] * 0.8
    t_full = torch.cat([txy, tz[:, None]], -1)
    X = _body_points(n, 200, radius, gen)
    err, p, k, c = _crop_errors(X, t_full, wh, focal)
    pc = (p - c[:, None]).norm(dim=-1)  # (N, P)
    exact = k[..., None] * pc[:, None] * X[:, None, :, 2].abs() / tz[:, None, None]
    torch.testing.assert_close(err, exact, rtol=1e-7, atol=1e-9)
    d = X[..., 2].abs().amax(dim=1)  # half depth extent per body
    bound = k[..., None] * pc[:, None] * (d / tz)[:, None, None]
    assert (err <= bound * (1 + 1e-9) + 1e-12).all()
    bound3d = k * (focal * radius * (txy.norm(dim=-1) + radius) / (tz * (tz - radius)))[:, None]
    assert (err.amax(dim=-1) <= bound3d * (1 + 1e-9)).all()


@pytest.mark.parametrize("txy", [(0.0, 0.0), (0.6, -0.4), (2.0, 1.0)])
def test_weak_perspective_error_shrinks_with_distance(txy):
    gen = torch.Generator().manual_seed(12)
    X = _body_points(1, 300, 1.0, gen)
    wh = torch.tensor([[1920.0, 1080.0]], dtype=torch.float64)
    focal = g.default_focal(wh[:, 0], wh[:, 1])
    worst = []
    for z in [3.0, 4.0, 6.0, 10.0, 20.0, 50.0, 100.0]:
        t_full = torch.tensor([[txy[0], txy[1], z]], dtype=torch.float64)
        err, *_ = _crop_errors(X, t_full, wh, focal)
        worst.append(err.max().item())
    assert all(b < a for a, b in itertools.pairwise(worst)), worst
    assert worst[-1] < 0.1 * worst[0]


def test_weak_perspective_zero_error_on_flat_body():
    """Points on the root's fronto-parallel plane (X_z = 0) project identically."""
    gen = torch.Generator().manual_seed(13)
    X = _body_points(8, 50, 1.0, gen)
    X[..., 2] = 0
    wh = torch.tensor([[1280.0, 720.0]], dtype=torch.float64).expand(8, 2)
    t_full = torch.cat(
        [torch.rand(8, 2, generator=gen, dtype=torch.float64) - 0.5, torch.full((8, 1), 5.0, dtype=torch.float64)], -1
    )
    err, *_ = _crop_errors(X, t_full, wh, g.default_focal(wh[:, 0], wh[:, 1]))
    assert err.max().item() < 1e-9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine")
def test_cameras_on_cuda():
    wh, focal, boxes, t_full = _random_scene(100, seed=21)
    dev = torch.device("cuda")
    rois = g.make_rois(boxes.to(dev))
    cams = g.full_to_local(t_full.to(dev)[:, None], rois, wh.to(dev)[:, None], focal.to(dev)[:, None])
    assert cams.device.type == "cuda"
    back = g.local_to_full(cams, rois, wh.to(dev)[:, None], focal.to(dev)[:, None])
    torch.testing.assert_close(back.cpu(), t_full[:, None].expand_as(back.cpu()))
    loss = g.consistency_loss(cams, rois, wh.to(dev))
    assert loss.device.type == "cuda" and loss.item() < 1e-12
