"""Boxes, the Multi-RoI layout and CLIFF's bbox_info."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hmrcli import geometry as g


# ---------------------------------------------------------------- boxes
def test_box_from_xyxy_rect_cliff_rule():
    # w = 60, h = 200: max(60 * 256/192, 200) = 200 -> b = 220 (rescale 1.1)
    box = g.box_from_xyxy([10.0, 20.0, 70.0, 220.0])
    np.testing.assert_allclose(box, [40.0, 120.0, 220.0])
    # wide box: max(300 * 4/3, 100) = 400 -> 440
    np.testing.assert_allclose(g.box_from_xyxy([0, 0, 300, 100], "rect"), [150, 50, 440])


def test_box_from_xyxy_square_spin_rule():
    np.testing.assert_allclose(g.box_from_xyxy([0, 0, 300, 100], "square"), [150, 50, 360])
    np.testing.assert_allclose(g.box_from_xyxy([0, 0, 30, 100], "square", rescale=1.0), [15, 50, 100])


def test_box_conversions_round_trip():
    rng = np.random.default_rng(0)
    for aspect in ("rect", "square"):
        boxes = np.stack([rng.uniform(0, 1000, 50), rng.uniform(0, 800, 50), rng.uniform(20, 500, 50)], -1)
        xyxy = g.cxcyb_to_xyxy(boxes, aspect)
        w, h = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
        np.testing.assert_allclose(w, g.box_aspect(aspect) * boxes[:, 2])
        np.testing.assert_allclose(h, boxes[:, 2])
        np.testing.assert_allclose(g.xyxy_to_cxcyb(xyxy, aspect), boxes, rtol=1e-12)
        np.testing.assert_allclose(g.cxcywh_to_xyxy(g.xyxy_to_cxcywh(xyxy)), xyxy)
        np.testing.assert_allclose(g.box_wh(boxes, aspect), np.stack([w, h], -1))


def test_center_scale():
    center, scale = g.box_to_center_scale(np.array([[10.0, 20.0, 300.0]]))
    np.testing.assert_allclose(center, [[10, 20]])
    np.testing.assert_allclose(scale, [1.5])
    np.testing.assert_allclose(g.center_scale_to_box(center, scale), [[10, 20, 300]])


def test_boxes_follow_backend_and_dtype():
    t32 = torch.tensor([[0.0, 0.0, 30.0, 40.0]], dtype=torch.float32)
    out = g.box_from_xyxy(t32)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    out64 = g.box_from_xyxy(t32.double())
    assert out64.dtype == torch.float64
    assert isinstance(g.box_from_xyxy([0, 0, 3, 4]), np.ndarray)
    assert g.box_from_xyxy(np.zeros((2, 3, 4), np.float32)).dtype == np.float32
    assert g.box_from_xyxy(torch.zeros(2, 3, 4)).shape == (2, 3, 3)


def test_bad_aspect_and_shape():
    with pytest.raises(ValueError):
        g.box_from_xyxy([0, 0, 1, 1], aspect="wide")
    with pytest.raises(ValueError):
        g.box_from_xyxy([0, 0, 1])


# ---------------------------------------------------------------- RoIs
def test_roi_layout_exact_values():
    rois = g.make_rois(np.array([100.0, 200.0, 50.0]))
    expected = [
        [100.0, 200.0, 50.0],  # the box
        [105.0, 200.0, 75.0],  # +0.1b x, 1.5
        [95.0, 200.0, 62.5],  # -0.1b x, 1.25
        [100.0, 205.0, 40.0],  # +0.1b y, 0.8
        [100.0, 195.0, 32.5],  # -0.1b y, 0.65
    ]
    np.testing.assert_allclose(rois, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_make_rois_prefix_and_shapes(m):
    boxes = torch.rand(4, 2, 3, dtype=torch.float64) * 100 + 10
    full = g.make_rois(boxes, 5)
    part = g.make_rois(boxes, m)
    assert part.shape == (4, 2, m, 3) and part.dtype == torch.float64
    torch.testing.assert_close(part, full[..., :m, :])
    torch.testing.assert_close(part[..., 0, :], boxes)
    assert g.roi_layout(m).shape == (m, 3)


@pytest.mark.parametrize("m", [0, 6, -1])
def test_make_rois_rejects_bad_m(m):
    with pytest.raises(ValueError):
        g.make_rois(np.array([1.0, 2.0, 3.0]), m)
    with pytest.raises(TypeError):
        g.make_rois(np.array([1.0, 2.0, 3.0]), 2.0)


def test_make_rois_float32():
    out = g.make_rois(torch.tensor([10.0, 20.0, 30.0]))
    assert out.dtype == torch.float32 and out.shape == (5, 3)
    out = g.make_rois(np.array([10.0, 20.0, 30.0], np.float32), 3)
    assert out.dtype == np.float32 and out.shape == (3, 3)


# ---------------------------------------------------------------- bbox_info
def test_default_focal():
    assert g.default_focal(640, 480) == 800.0
    np.testing.assert_allclose(g.default_focal(np.array([3.0]), np.array([4.0])), [5.0])


def test_bbox_info_hand_computed():
    # W=640, H=480 -> f = 800.  x = 80/800*2.8, y = 60/800*2.8, size = (240-192)/48.
    info = g.bbox_info(np.array([400.0, 300.0, 240.0]), np.array([640.0, 480.0]))
    np.testing.assert_allclose(info, [0.28, 0.21, 1.0], rtol=1e-12)
    info = g.bbox_info(np.array([400.0, 300.0, 240.0]), np.array([640.0, 480.0]), focal=1000.0)
    np.testing.assert_allclose(info, [80 / 1000 * 2.8, 60 / 1000 * 2.8, (240 - 240) / 60], atol=1e-12)


def test_bbox_info_batched_torch():
    rois = g.make_rois(torch.tensor([[400.0, 300.0, 240.0], [10.0, 20.0, 30.0]]))  # (2, 5, 3)
    wh = torch.tensor([[640.0, 480.0], [1920.0, 1080.0]])
    info = g.bbox_info(rois, wh[:, None, :])
    assert info.shape == (2, 5, 3) and info.dtype == torch.float32
    f = math.hypot(1920, 1080)
    torch.testing.assert_close(
        info[1, 0], torch.tensor([(10 - 960) / f * 2.8, (20 - 540) / f * 2.8, (30 - 0.24 * f) / (0.06 * f)])
    )


def test_box_iou_and_inside_fraction():
    from hmrcli.geometry import box_inside_fraction, box_iou_xyxy

    a = [0.0, 0.0, 10.0, 10.0]
    assert box_iou_xyxy(a, a) == pytest.approx(1.0)
    assert box_iou_xyxy(a, [5.0, 0.0, 15.0, 10.0]) == pytest.approx(50.0 / 150.0)
    assert box_iou_xyxy(a, [20.0, 20.0, 30.0, 30.0]) == 0.0
    assert box_iou_xyxy(a, [3.0, 3.0, 3.0, 9.0]) == 0.0  # empty box
    many = box_iou_xyxy(np.array(a), np.array([a, [5.0, 0.0, 15.0, 10.0]]))
    np.testing.assert_allclose(many, [1.0, 1.0 / 3.0])
    assert box_inside_fraction([2.0, 2.0, 4.0, 4.0], a) == pytest.approx(1.0)
    assert box_inside_fraction([5.0, 0.0, 15.0, 10.0], a) == pytest.approx(0.5)
