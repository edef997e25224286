"""Crop affines and the two warping paths (torch grid_sample, OpenCV warpAffine)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from hmrcli import geometry as g

SIZES = {aspect: g.crop_size(aspect) for aspect in ("rect", "square")}


def _torch_crop(img_hwc: np.ndarray, affine: np.ndarray, crop_hw) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img_hwc)).permute(2, 0, 1)[None].to(torch.float64)
    out = g.crop_images(t, torch.from_numpy(affine)[None], crop_hw)
    return out[0].permute(1, 2, 0).numpy()


def _both(img, affine, crop_hw):
    return _torch_crop(img, affine, crop_hw), g.crop_image_np(img, affine, crop_hw).astype(np.float64)


# ---------------------------------------------------------------- affine matrices
@pytest.mark.parametrize("aspect", ["rect", "square"])
def test_affine_maps_box_to_crop(aspect):
    h, w = SIZES[aspect]
    box = np.array([321.5, 207.25, 180.0])
    A = g.crop_affine(box, (h, w))
    corners = g.cxcyb_to_xyxy(box, aspect).reshape(2, 2)
    np.testing.assert_allclose(g.map_points(corners, A), [[0, 0], [w, h]], atol=1e-9)
    np.testing.assert_allclose(g.map_points(box[None, :2], A), [[w / 2, h / 2]], atol=1e-12)
    # normalised crop coordinates agree with the affine
    pts = np.random.default_rng(0).uniform(0, 600, (10, 2))
    via_norm = g.normalized_to_crop_pixels(g.image_to_normalized(pts, box), (h, w))
    np.testing.assert_allclose(via_norm, g.map_points(pts, A), atol=1e-9)
    np.testing.assert_allclose(
        g.crop_pixels_to_normalized(via_norm, (h, w)), g.image_to_normalized(pts, box), atol=1e-12
    )


def test_rect_normalised_ranges():
    box = np.array([100.0, 100.0, 80.0])
    corners = g.map_points(np.array([[0.0, 0.0], [192.0, 256.0]]), g.invert_affine(g.crop_affine(box, (256, 192))))
    np.testing.assert_allclose(g.image_to_normalized(corners, box), [[-0.75, -1.0], [0.75, 1.0]], atol=1e-12)


def test_affine_rotation_matches_cv2():
    box = np.array([300.0, 200.0, 150.0])
    h, w = 256, 192
    for rot in (0.0, 30.0, -75.0, 180.0):
        A = g.crop_affine(box, (h, w), rot_deg=rot)
        M = cv2.getRotationMatrix2D((300.0, 200.0), rot, h / 150.0)
        M[:, 2] += [w / 2 - 300.0, h / 2 - 200.0]
        np.testing.assert_allclose(A, M, atol=1e-9)


def test_invert_compose_map_round_trip():
    gen = torch.Generator().manual_seed(0)
    boxes = torch.rand(4, 5, 3, generator=gen, dtype=torch.float64) * torch.tensor(
        [800.0, 600.0, 300.0]
    ) + torch.tensor([0.0, 0.0, 30.0])
    rot = torch.rand(4, 5, generator=gen, dtype=torch.float64) * 360
    A = g.crop_affine(boxes, (256, 192), rot)
    assert A.shape == (4, 5, 2, 3) and A.dtype == torch.float64
    Ai = g.invert_affine(A)
    ident = g.compose_affine(A, Ai)
    torch.testing.assert_close(ident, torch.eye(3, dtype=torch.float64)[:2].expand(4, 5, 2, 3))
    pts = torch.rand(4, 5, 17, 2, generator=gen, dtype=torch.float64) * 1000
    torch.testing.assert_close(g.map_points(g.map_points(pts, A), Ai), pts)
    assert g.crop_affine(boxes.float(), (224, 224)).dtype == torch.float32


# ---------------------------------------------------------------- warping: exact cases
@pytest.mark.parametrize("aspect", ["rect", "square"])
def test_unit_scale_crop_is_a_slice(aspect):
    """k = 1 and integer offset: the crop is exactly a slice of the image, zeros outside."""
    h, w = SIZES[aspect]
    rng = np.random.default_rng(1)
    img = rng.integers(1, 256, (300, 400, 3), dtype=np.uint8)  # no zeros inside the image
    for cx, cy in [(200, 150), (50, 40), (390, 290)]:
        A = g.crop_affine(np.array([cx, cy, float(h)]), (h, w))
        x0, y0 = cx - w // 2, cy - h // 2  # source of crop pixel (0, 0)
        expected = np.zeros((h, w, 3))
        ys, xs = slice(max(0, -y0), min(h, 300 - y0)), slice(max(0, -x0), min(w, 400 - x0))
        expected[ys, xs] = img[ys.start + y0 : ys.stop + y0, xs.start + x0 : xs.stop + x0]
        t, c = _both(img, A, (h, w))
        np.testing.assert_array_equal(c, expected)
        np.testing.assert_allclose(t, expected, atol=1e-9)


def _rect_image(H=240, W=320, rect=(60, 40, 180, 150), fg=200.0, bg=40.0):
    """Background ``bg`` with a filled rectangle [x0..x1] x [y0..y1] (inclusive pixel indices)."""
    img = np.full((H, W, 3), bg, np.uint8)
    x0, y0, x1, y1 = rect
    img[y0 : y1 + 1, x0 : x1 + 1] = fg
    img[y0 : y1 + 1, x0 : x1 + 1, 2] = 120  # a different value in one channel
    return img


CASES = [  # (cx, cy, b, rot): inside, zoom in, zoom out, straddling the border, rotated
    (120.0, 95.0, 210.0, 0.0),
    (175.3, 147.7, 93.4, 0.0),
    (160.0, 120.0, 520.0, 0.0),
    (10.0, 230.0, 260.0, 0.0),
    (250.5, 20.25, 200.0, 0.0),
    (120.0, 95.0, 230.0, 33.0),
]


@pytest.mark.parametrize("aspect", ["rect", "square"])
@pytest.mark.parametrize("case", CASES)
def test_drawn_rectangle_lands_where_inverse_affine_says(aspect, case):
    h, w = SIZES[aspect]
    H, W, (x0, y0, x1, y1) = 240, 320, (60, 40, 180, 150)
    img = _rect_image(H, W, (x0, y0, x1, y1))
    cx, cy, b, rot = case
    A = g.crop_affine(np.array([cx, cy, b]), (h, w), rot_deg=rot)
    ys, xs = np.mgrid[0:h, 0:w]
    src = g.map_points(np.stack([xs, ys], -1).reshape(-1, 2).astype(float), g.invert_affine(A)).reshape(h, w, 2)
    sx, sy = src[..., 0], src[..., 1]
    tol = 1e-3  # keep away from exact pixel-centre ties
    inside_rect = (sx >= x0 + tol) & (sx <= x1 - tol) & (sy >= y0 + tol) & (sy <= y1 - tol)
    in_image = (sx >= tol) & (sx <= W - 1 - tol) & (sy >= tol) & (sy <= H - 1 - tol)
    off_rect = ~((sx > x0 - 1 - tol) & (sx < x1 + 1 + tol) & (sy > y0 - 1 - tol) & (sy < y1 + 1 + tol))
    outside = (sx <= -1 - tol) | (sx >= W + tol) | (sy <= -1 - tol) | (sy >= H + tol)
    fg, bg = np.array([200.0, 200.0, 120.0]), np.array([40.0, 40.0, 40.0])
    for crop in _both(img, A, (h, w)):
        assert crop.shape == (h, w, 3)
        np.testing.assert_allclose(crop[inside_rect], np.broadcast_to(fg, crop[inside_rect].shape), atol=1e-6)
        sel = in_image & off_rect
        np.testing.assert_allclose(crop[sel], np.broadcast_to(bg, crop[sel].shape), atol=1e-6)
        assert (crop[outside] == 0).all()
    # the cases do exercise every class (and zeros outside where the box leaves the image)
    assert inside_rect.any() and (in_image & off_rect).any()
    if case in (CASES[2], CASES[3], CASES[4]):
        assert outside.any()


def test_linear_ramp_is_sampled_exactly():
    """Bilinear sampling of a linear image returns the ramp at the inverse-affine point."""
    H, W = 200, 300
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    ramp = np.stack([0.5 * xs + 0.25 * ys + 3.0, -0.3 * xs + 0.7 * ys + 100.0, 0.1 * xs + 7.0], -1)
    for aspect in ("rect", "square"):
        h, w = SIZES[aspect]
        for box, rot in [((150.3, 97.9, 120.7), 0.0), ((140.0, 100.0, 60.0), 17.0)]:
            A = g.crop_affine(np.array(box), (h, w), rot_deg=rot)
            cy_, cx_ = np.mgrid[0:h, 0:w]
            src = g.map_points(np.stack([cx_, cy_], -1).reshape(-1, 2).astype(float), g.invert_affine(A))
            sx, sy = src[:, 0].reshape(h, w), src[:, 1].reshape(h, w)
            expected = np.stack([0.5 * sx + 0.25 * sy + 3.0, -0.3 * sx + 0.7 * sy + 100.0, 0.1 * sx + 7.0], -1)
            torch_crop = _torch_crop(ramp, A, (h, w))
            np.testing.assert_allclose(torch_crop, expected, atol=1e-8)
            cv_crop = g.crop_image_np(ramp.astype(np.float32), A, (h, w))
            # OpenCV quantises sub-pixel positions to 1/32 px: error <= |grad| / 32 per axis
            np.testing.assert_allclose(cv_crop, expected, atol=(0.76 + 0.1) / 32 + 1e-3)


def test_torch_and_cv2_agree_on_natural_image():
    rng = np.random.default_rng(5)
    noise = rng.uniform(0, 255, (360, 480, 3)).astype(np.float32)
    img = np.clip(cv2.GaussianBlur(noise, (0, 0), 3.0) * 4 - 384, 0, 255).astype(np.uint8)
    boxes = np.array([[240.0, 180.0, 300.0], [30.0, 350.0, 200.0], [400.0, 60.0, 90.0]])
    for aspect in ("rect", "square"):
        h, w = SIZES[aspect]
        rois = g.make_rois(boxes)  # (3, 5, 3)
        A = g.crop_affine(rois, (h, w))
        imgs = torch.from_numpy(img).permute(2, 0, 1)[None].float()  # B = 1 broadcasts
        crops = g.crop_images(imgs.expand(3, -1, -1, -1), A, (h, w))
        assert crops.shape == (3, 5, 3, h, w) and crops.dtype == torch.float32
        for i in range(3):
            for m in range(5):
                cv = g.crop_image_np(img, A[i, m], (h, w)).astype(np.float32)
                diff = np.abs(crops[i, m].permute(1, 2, 0).numpy() - cv)
                # only uint8 rounding (and OpenCV's 1/32-px fixed point) separates the two paths
                assert diff.mean() < 0.3 and diff.max() <= 1.0, (aspect, i, m, diff.mean(), diff.max())


def test_crop_images_shapes_dtypes_and_broadcast():
    img = torch.rand(1, 3, 50, 60, dtype=torch.float64) * 255
    boxes = torch.tensor([[[30.0, 25.0, 40.0], [20.0, 20.0, 10.0]]], dtype=torch.float64)
    A = g.crop_affine(boxes, (32, 24))
    out = g.crop_images(img, A, (32, 24))
    assert out.shape == (1, 2, 3, 32, 24) and out.dtype == torch.float64
    single = g.crop_images(img, A[:, 0], (32, 24))
    torch.testing.assert_close(single, out[:, 0])
    # numpy affines and uint8 images are accepted
    out8 = g.crop_images(img.to(torch.uint8), A.numpy(), (32, 24))
    assert out8.dtype == torch.float32 and out8.shape == (1, 2, 3, 32, 24)
    # a batch of images with one affine set
    out2 = g.crop_images(img.expand(3, -1, -1, -1), A, (32, 24))
    assert out2.shape == (3, 2, 3, 32, 24)
    with pytest.raises(ValueError):
        g.crop_images(img[0], A, (32, 24))


def test_crop_images_is_differentiable():
    img = (torch.rand(1, 3, 40, 40, dtype=torch.float64) * 255).requires_grad_()
    out = g.crop_images(img, g.crop_affine(torch.tensor([[20.0, 20.0, 30.0]], dtype=torch.float64), (16, 12)), (16, 12))
    out.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


# ---------------------------------------------------------------- normalisation
def test_normalize_crops_round_trip_and_values():
    x = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1).expand(2, 3, 4, 5) * 255
    torch.testing.assert_close(g.normalize_crops(x), torch.zeros(2, 3, 4, 5), atol=1e-6, rtol=0)
    img = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    n = g.normalize_crops(img, channel_axis=-1)
    assert n.dtype == np.float32
    np.testing.assert_allclose(n[..., 1], (img[..., 1] / 255 - 0.456) / 0.224, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g.denormalize_crops(n, channel_axis=-1), img, atol=1e-3)
    t = torch.rand(2, 5, 3, 6, 7, dtype=torch.float64) * 255
    torch.testing.assert_close(g.denormalize_crops(g.normalize_crops(t)), t)
    with pytest.raises(ValueError):
        g.normalize_crops(torch.zeros(1, 4, 5, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine")
def test_crops_on_cuda_match_cpu():
    img = torch.rand(2, 3, 120, 160) * 255
    boxes = torch.tensor([[80.0, 60.0, 100.0], [10.0, 110.0, 70.0]])
    A = g.crop_affine(g.make_rois(boxes), (256, 192))
    cpu = g.crop_images(img, A, (256, 192))
    gpu = g.crop_images(img.cuda(), A.cuda(), (256, 192))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-4)
