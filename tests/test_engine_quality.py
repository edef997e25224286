"""The per-person quality block (hmrcli.engine.quality) on constructed cases with known answers."""

import numpy as np
import pytest
import torch

from hmrcli import geometry as G
from hmrcli.body import load_body_model
from hmrcli.engine.base import PersonBox, PersonEstimate
from hmrcli.engine.quality import (
    FLAGS,
    QualitySettings,
    add_fit_quality,
    add_regress_quality,
    camera_spread_pct,
    fit_quality,
    flags_of,
    joint_spread_mm,
    pose_limit_excess,
    regress_quality,
    score_of,
    spread,
    truncated_sides,
    visible_joints,
)
from hmrcli.fit.landmarks import PersonLandmarks

W, H = 640, 480
F = 800.0
K = G.intrinsics(F, W, H)


@pytest.fixture(scope="module")
def free():
    return load_body_model("free")


def _upright(free, seed=0):
    rot = np.tile(np.eye(3), (24, 1, 1))
    rot[0] = np.diag([1.0, -1.0, -1.0])  # body +y up -> camera -y, facing the camera
    out = free(torch.from_numpy(rot[None]))
    return rot, out.vertices[0].numpy(), out.joints[0].numpy(), out.keypoints_coco[0].numpy()


# -- the pure measures -------------------------------------------------------------------------

def test_identical_estimates_have_zero_spread():
    rng = np.random.default_rng(0)
    pts = np.repeat(rng.normal(size=(1, 17, 2)) * 100, 5, axis=0)
    per, overall = spread(pts)
    assert np.all(per == 0) and overall == 0


@pytest.mark.parametrize("m", [2, 3, 5])
def test_one_estimate_shifted_gives_d_sqrt_m_minus_1_over_m(m):
    rng = np.random.default_rng(1)
    pts = np.repeat(rng.normal(size=(1, 17, 3)), m, axis=0)
    d = 0.25
    pts[2 % m, 4] += np.array([0.6, 0.0, 0.8]) * d  # |shift| = d, RoI 2 (or 0), joint 4 only
    per, overall = spread(pts)
    assert per[4] == pytest.approx(d * np.sqrt(m - 1) / m, rel=1e-12)
    assert np.all(np.delete(per, 4) == 0)
    assert overall == pytest.approx(per[4] / 17)


def test_spread_uses_only_valid_estimates_and_needs_two():
    pts = np.zeros((5, 3, 2))
    pts[4, :, 0] = 50.0  # a wild RoI ...
    valid = np.ones((5, 3), dtype=bool)
    valid[4] = False  # ... that did not see the points
    valid[1:, 2] = False  # point 2 seen by one RoI only: no spread
    per, overall = spread(pts, valid)
    assert per[0] == 0 and per[1] == 0 and np.isnan(per[2]) and overall == 0
    per, overall = spread(pts[:1])
    assert np.all(np.isnan(per)) and np.isnan(overall)


def test_joint_spread_aligns_the_pelvis_and_is_in_mm():
    rng = np.random.default_rng(2)
    joints = np.repeat(rng.normal(size=(1, 24, 3)), 5, axis=0)
    joints += rng.normal(size=(5, 1, 3))  # RoIs placing the same body elsewhere: no disagreement
    per, overall = joint_spread_mm(joints)
    assert np.allclose(per, 0, atol=1e-9) and overall == pytest.approx(0, abs=1e-9)
    joints[3, 20] += [0.0, 0.1, 0.0]  # one RoI's right wrist 10 cm off
    per, overall = joint_spread_mm(joints)
    assert per[20] == pytest.approx(100 * 2 / 5)  # mm: d sqrt(4) / 5
    assert np.allclose(np.delete(per, 20), 0, atol=1e-9)


def test_camera_spread_in_percent_of_depth():
    t = np.tile([0.3, -0.2, 10.0], (5, 1))
    assert camera_spread_pct(t) == 0
    t[1, 2] += 1.0  # one RoI 1 m deeper at ~10 m
    expect = 1.0 * 2 / 5 / t[:, 2].mean() * 100
    assert camera_spread_pct(t) == pytest.approx(expect)
    assert np.isnan(camera_spread_pct(t[:1]))


def test_truncated_sides():
    assert truncated_sides((W, H), np.array([100.0, 50, 300, 400])) == []
    assert truncated_sides((W, H), np.array([-0.5, 50, 300, 400])) == ["left"]
    assert truncated_sides((W, H), np.array([1.5, 50, 300, 400])) == ["left"]  # within 3 px: a detector's box
    assert truncated_sides((W, H), np.array([100.0, -0.5, W - 0.5, H - 0.5])) == ["top", "right", "bottom"]
    pts = np.array([[200.0, 100], [-20, 300], [250, H + 40]])
    assert truncated_sides((W, H), np.array([100.0, 50, 300, 400]), pts) == ["left", "bottom"]
    assert truncated_sides((W, H), None, np.array([[10.0, 10]])) == []


def test_visible_joints():
    kp = np.array([[10.0, 10], [-5, 10], [10, H + 1], [100, 100], [200, 200]])
    assert visible_joints(kp, (W, H)) == 3
    assert visible_joints(kp, (W, H), depth=np.array([1, 1, 1, -1, 1.0])) == 2
    assert visible_joints(kp, (W, H), conf=np.array([1, 1, 1, 1, 0.4])) == 2


def test_pose_limit_excess():
    rot = np.tile(np.eye(3), (24, 1, 1))
    assert np.all(pose_limit_excess(rot) == 0)
    import roma

    rot[4] = roma.rotvec_to_rotmat(torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64)).numpy()  # left knee backwards
    ex = pose_limit_excess(rot)
    assert ex[3] == pytest.approx(0.9, abs=1e-9)  # limit -0.1 rad
    assert np.all(np.delete(ex, 3) == 0)


def test_flags_and_score():
    s = QualitySettings()
    assert flags_of([], 17, False, 3.0, 0.0, 300.0, s) == []
    assert flags_of(["left"], 5, True, -0.1, 1.0, 20.0, s) == list(FLAGS)
    good, comps = score_of({}, 17, 300.0, None, [], 5, 5, s)
    assert good == 1.0 and comps["consistency"] == 1.0
    assert score_of({"a": 1.0, "b": float("nan")}, 17, 300.0, None, [])[0] == pytest.approx(np.exp(-1))
    assert score_of({}, 17, 300.0, None, ["behind_camera"])[0] == 0.0
    half, _ = score_of({}, 17, 300.0, None, ["implausible_pose"])
    assert half == pytest.approx(0.5)
    assert score_of({}, 17, 300.0, 0.0, [])[0] == pytest.approx(0.5)  # box score 0 halves it
    assert score_of({}, 17, 32.0, None, [])[0] == pytest.approx(0.25)  # size 32 / (2 * 64)
    assert score_of({}, 17, 300.0, None, [], rois_used=3, rois=5)[0] == pytest.approx(0.6)
    for args in [({"x": 1e9}, 0, 0.0, 1.0, list(FLAGS)), ({}, 99, 1e6, 5.0, [])]:
        v, _ = score_of(*args)
        assert 0.0 <= v <= 1.0


# -- per engine, on constructed estimates -------------------------------------------------------

def _estimate(free, box, cam_t, rois=None, cams_local=None):
    rot, verts, joints, kp = _upright(free)
    rois = np.tile([320.0, 240.0, 300.0], (5, 1)) if rois is None else rois
    if cams_local is None:
        cams_local = G.full_to_local(np.broadcast_to(cam_t, (len(rois), 3)), rois, np.array([W, H], float), F)
    est = PersonEstimate(box=PersonBox(np.asarray(box, float), 0.9, "test"), crop_box=rois[0], rois=rois,
                         bbox_info=np.zeros((len(rois), 3)), cams_local=cams_local, rotmats=rot, betas=np.zeros(10),
                         betas_applied=True, cam_t=np.asarray(cam_t, float), K=K, focal=F, image_wh=(W, H),
                         vertices_model=verts, joints_model=joints)
    return est, kp


def _box_of(est, kp):
    uv = G.project(kp + est.cam_t, K)
    return np.array([*uv.min(0), *uv.max(0)])


def test_regress_identical_rois_zero_spread_then_one_roi_shifted(free):
    rois = G.make_rois(np.array([[320.0, 250.0, 330.0]]), 5)[0]
    est, kp = _estimate(free, [250.0, 90, 390, 420], [0.0, 0.0, 6.0], rois)
    roi_joints = np.repeat(est.joints_model[None], 5, axis=0)
    q = regress_quality(est, roi_joints, kp)
    assert q["engine"] == "regress" and q["rois"] == 5
    assert q["joint_spread_mm"]["overall"] == 0 and q["camera_spread_pct"] == 0
    assert q["truncated"] == [] and q["flags"] == [] and q["visible_joints"] == 17
    assert 0.0 < q["score"] <= 1.0 and q["box_score"] == 0.9
    assert len(q["joint_spread_mm"]["per_joint"]) == 24
    roi_joints = roi_joints.copy()
    roi_joints[1, 15] += [0.05, 0.0, 0.0]  # RoI 1's head 5 cm off
    cams = est.cams_local.copy()
    t1 = np.array([0.0, 0.0, 7.0])  # RoI 1's camera puts the person 1 m deeper
    cams[1] = G.full_to_local(t1, rois[1], np.array([W, H], float), F)
    est.cams_local = cams
    q2 = regress_quality(est, roi_joints, kp)
    assert q2["joint_spread_mm"]["per_joint"][15] == pytest.approx(50 * 2 / 5, abs=0.05)
    t_all = np.array([[0, 0, 6.0]] * 5)
    t_all[1] = t1
    assert q2["camera_spread_pct"] == pytest.approx(camera_spread_pct(t_all), abs=0.01)
    assert q2["score"] < q["score"]


def test_regress_person_cut_at_the_left_border(free):
    est, kp = _estimate(free, [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 6.0])
    t = est.cam_t.copy()
    box = _box_of(est, kp)
    t[0] += (-0.5 - box[0] - 0.3 * (box[2] - box[0])) * t[2] / F  # 30 % of the body beyond the left border
    est.cam_t = t
    box = _box_of(est, kp)
    est.box = PersonBox(np.array([-0.5, box[1], box[2], box[3]]), 0.8, "test")  # the detector's box, clipped
    q = regress_quality(est, None, kp)
    assert q["truncated"] == ["left"]
    assert "truncated" in q["flags"]
    assert q["visible_joints"] < 17
    assert q["joint_spread_mm"]["overall"] is None and "note" in q
    assert q["components"]["penalty"] == pytest.approx(0.8)


def test_whole_image_boxes_are_not_truncation(free):
    est, kp = _estimate(free, [-0.5, -0.5, W - 0.5, H - 0.5], [0.0, 0.0, 6.0])
    est.box = PersonBox(np.array([-0.5, -0.5, W - 0.5, H - 0.5]), None, "whole-image")
    assert regress_quality(est, None, kp)["truncated"] == []
    est.box = PersonBox(np.array([-0.5, -0.5, W - 0.5, H - 0.5]), None, "detector")
    assert regress_quality(est, None, kp)["truncated"] == ["left", "top", "right", "bottom"]


def test_behind_camera_and_tiny(free):
    est, kp = _estimate(free, [300.0, 200, 310, 230], [0.0, 0.0, -4.0])
    q = regress_quality(est, None, kp)
    assert "behind_camera" in q["flags"] and "tiny" in q["flags"] and q["score"] == 0.0


def _landmarks(est, kp, shift=None, m=5):
    uv = G.project(kp + est.cam_t, K)
    root = 0.5 * (kp[11] + kp[12])
    roi2 = np.repeat(uv[None], m, axis=0)
    roi3 = np.repeat((kp - root)[None], m, axis=0)
    if shift is not None:
        roi2[shift[0], shift[1]] += shift[2]
    rois = G.make_rois(np.array([[uv[:, 0].mean(), uv[:, 1].mean(), 400.0]]), m)[0]
    return PersonLandmarks(kp2d=uv, conf2d=np.ones(17), kp3d=kp - root, conf3d=np.ones(17), rois=rois,
                           rois_ok=np.ones(m, dtype=bool), blazepose2d=np.zeros((33, 2)), blazepose_vis=np.zeros(33),
                           blazepose3d=np.zeros((33, 3)), roi_kp2d=roi2, roi_vis=np.ones((m, 17)), roi_kp3d=roi3,
                           roi_in_crop=np.ones((m, 17), dtype=bool))


def test_fit_identical_rois_then_one_shifted(free):
    est, kp = _estimate(free, [250.0, 90, 390, 420], [0.0, 0.0, 6.0])
    q = fit_quality(est, _landmarks(est, kp), kp)
    assert q["engine"] == "fit" and q["landmarks_used"] == 17 and q["rois_used"] == 5
    assert q["landmark_spread_px"]["overall"] == 0 and q["landmark_spread_3d_mm"]["overall"] == 0
    assert q["residual_2d_px"]["overall"] == pytest.approx(0, abs=1e-6)
    assert q["residual_3d_mm"]["overall"] == pytest.approx(0, abs=1e-6)
    assert q["flags"] == [] and q["truncated"] == [] and q["visible_joints"] == 17
    assert q["score"] == pytest.approx(0.95)  # box score 0.9 -> 0.95; nothing else costs
    lm = _landmarks(est, kp, shift=(3, 9, np.array([12.0, -16.0])))  # RoI 3's left wrist 20 px off
    q2 = fit_quality(est, lm, kp)
    assert q2["landmark_spread_px"]["per_joint"][9] == pytest.approx(20 * 2 / 5, abs=0.05)
    assert q2["landmark_spread_box_pct"]["per_joint"][9] == pytest.approx(8 / 400 * 100, abs=0.01)
    assert q2["landmark_spread_px"]["overall"] == pytest.approx(8 / 17, abs=0.05)
    assert q2["box_px"] == 400.0


def test_fit_residuals_and_unused_landmarks(free):
    est, kp = _estimate(free, [250.0, 90, 390, 420], [0.0, 0.0, 6.0])
    lm = _landmarks(est, kp)
    lm.kp2d = lm.kp2d.copy()
    lm.kp2d[0] += [3.0, 4.0]  # nose landmark 5 px from the fitted nose
    lm.conf2d = lm.conf2d.copy()
    lm.conf2d[16] = 0.0  # right ankle not used
    lm.kp3d = lm.kp3d.copy()
    lm.kp3d[5, 2] += 0.1  # left shoulder 10 cm deeper in the world landmarks
    q = fit_quality(est, lm, kp)
    assert q["landmarks_used"] == 16
    assert q["residual_2d_px"]["per_joint"][0] == pytest.approx(5.0, abs=1e-3)
    assert q["residual_2d_px"]["per_joint"][16] is None
    assert q["residual_3d_mm"]["per_joint"][5] == pytest.approx(100.0, abs=1e-3)
    assert q["residual_2d_px"]["overall"] == pytest.approx(5.0 / 16, abs=0.01)
    assert q["visible_joints"] == 16


def test_fit_dropped_rois_disagree(free):
    est, kp = _estimate(free, [250.0, 90, 390, 420], [0.0, 0.0, 6.0])
    lm = _landmarks(est, kp)
    lm.rois_ok = np.array([True, True, False, False, False])
    q = fit_quality(est, lm, kp)
    assert q["rois_used"] == 2 and "rois_disagree" in q["flags"]
    assert q["components"]["consistency"] == pytest.approx(2 / 5)


def test_fit_person_cut_at_the_left_border(free):
    est, kp = _estimate(free, [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 6.0])
    box = _box_of(est, kp)
    est.cam_t = est.cam_t + [(-0.5 - box[0] - 0.25 * (box[2] - box[0])) * 6.0 / F, 0.0, 0.0]
    box = _box_of(est, kp)
    est.box = PersonBox(np.array([-0.5, box[1], box[2], box[3]]), 0.7, "test")
    q = fit_quality(est, _landmarks(est, kp), kp)
    assert q["truncated"] == ["left"] and "truncated" in q["flags"]


def test_add_regress_quality_poses_each_roi(free):
    """The batch call poses every RoI's own pose through the body model: RoIs with the
    person's pose give zero spread, a RoI with a bent elbow gives spread at the arm only."""
    est, kp = _estimate(free, [250.0, 90, 390, 420], [0.0, 0.0, 6.0])
    est2, _ = _estimate(free, [250.0, 90, 390, 420], [0.0, 0.0, 6.0])
    roi_rot = np.repeat(est.rotmats[None, None], 5, axis=1).repeat(2, axis=0)  # (2, 5, 24, 3, 3)
    import roma

    roi_rot[1, 2, 18] = roma.rotvec_to_rotmat(torch.tensor([0.0, -1.2, 0.0], dtype=torch.float64)).numpy()
    add_regress_quality(free, [est, est2], torch.from_numpy(roi_rot).float(), torch.zeros(2, 5, 10), True)
    assert est.quality["joint_spread_mm"]["overall"] == pytest.approx(0, abs=1e-3)
    per = np.array([v for v in est2.quality["joint_spread_mm"]["per_joint"]], dtype=float)
    arm = [20, 22]  # left wrist, left hand move with the left elbow (18)
    assert np.all(per[arm] > 10) and np.all(np.delete(per, arm + [18]) < 0.01)


def test_add_fit_quality_sets_every_estimate(free):
    ests, lms = [], []
    for z in (5.0, 7.0):
        est, kp = _estimate(free, [250.0, 90, 390, 420], [0.0, 0.0, z])
        ests.append(est)
        lms.append(_landmarks(est, kp))
    add_fit_quality(free, ests, lms)
    assert all(e.quality["engine"] == "fit" and e.quality["landmark_spread_px"]["overall"] == 0 for e in ests)
