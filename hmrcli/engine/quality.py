"""Per-person quality: how far to trust a mesh, from its RoIs' disagreement and simple checks.

Multi-RoI sees every person through M shifted and scaled crops. When the crops agree, the
estimate is likely sound; when they disagree, something is off (occlusion, truncation, a
wrong box). This module turns that, and a few checks any engine can make, into one
``quality`` block per person (written into the camera JSON, ``hmrcli.camera/1``; the
field table with units is in ``docs/records.md``, the score in ``docs/method.md`` §9).

Measures (all per person; "per joint" lists hold null where a joint has no value):

* regression engine (:func:`regress_quality`): each RoI's own pose and shape posed through
  the body model, the joints aligned at the pelvis (joint 0) -> ``joint_spread_mm``, the
  RMS distance of the RoIs' joints from their mean, per SMPL joint (24) and overall (mean
  over joints); each RoI's local camera converted to the full image (docs/method.md §4) ->
  ``camera_spread_pct``, the RMS distance of the M full-image translations from their mean
  in % of the mean depth.
* fitting engine (:func:`fit_quality`): the per-view BlazePose landmarks (COCO-17; a view is a
  RoI's crop, or its mirror image with mirrored views) ->
  ``landmark_spread_px`` / ``landmark_spread_box_pct`` (the same RMS spread, 2D, in pixels
  and in % of the person's square crop box ``b``) and ``landmark_spread_3d_mm`` (of the
  views' metric world landmarks); per landmark only over the views that saw it (visibility >=
  0.5, inside their crop), undefined with fewer than 2; ``landmarks_used`` (landmarks that
  entered the fit), ``residual_2d_px`` (fitted keypoints projected vs the fused landmarks)
  and ``residual_3d_mm`` (hip-centred fitted keypoints vs the hip-centred fused world
  landmarks), per landmark and overall (mean over the landmarks used).
* both: ``truncated`` (the sides -- left, top, right, bottom -- where the detector box
  touches the image border or a keypoint lies outside the image), ``visible_joints`` (of the
  17 COCO keypoints: inside the image and in front of the camera, and for the fit seen with
  confidence >= 0.5), ``box_score`` (the detector's), ``height_px`` (box height),
  ``pose_limit_excess_rad`` (largest excess of a joint's axis-angle component over the
  joint-limit table of :mod:`hmrcli.body.pose_limits`), ``score`` and ``flags``.

Why hand-written: these are a few lines of numpy over arrays the engines already hold; no
library computes RoI disagreement of a Multi-RoI network.

The score in [0, 1] is a product of factors, each in [0, 1] (:func:`score_of`; the factors
are recorded as ``components``):

    score = consistency * visibility * size * box * penalty
    consistency = exp(-sum_k max(0, m_k - floor_k) / scale_k) * (views_used / views)
    visibility  = visible_joints / 17
    size        = min(1, height_px / (2 * tiny_px))
    box         = 0.5 + 0.5 * box_score     (1 when the box has no score)
    penalty     = 0 if behind_camera, else 0.5 if implausible_pose, times 0.8 if truncated

with m_k the engine's disagreement and residual measures and floor_k, scale_k in
:class:`QualitySettings`: the regression engine's ``joint_spread_mm`` (20 / 50 mm) and
``camera_spread_pct`` (2 / 10 %); the fit's ``landmark_spread_box_pct`` (1 / 16 %),
``landmark_spread_3d_mm`` (40 / 500 mm), ``residual_2d_px`` in % of the box (1 / 8 %) and
``residual_3d_mm`` (20 / 25 mm); ``views_used / views`` for the fit only (the landmark sets
kept by the fusion: one per RoI, two with mirrored views, :mod:`hmrcli.fit.landmarks`). A measure that cannot
be computed (one RoI, no per-RoI poses from an ONNX graph) is left out. The fit's values were
chosen on a synthetic development set (docs/method.md §9.4); the regression engine's are not
calibrated (no trained regressor exists here).

Flags, fixed names (:data:`FLAGS`): ``truncated``; ``low_visibility`` (visible_joints <
``min_visible``); ``rois_disagree`` (a spread above its threshold, or, for the fit, fewer
than half of the views kept by the landmark fusion); ``behind_camera`` (a joint at z <= 0);
``implausible_pose`` (a joint beyond its limits by more than ``limit_tolerance_rad``);
``tiny`` (box height < ``tiny_px``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import roma
import torch

from hmrcli import geometry as G
from hmrcli.body import JOINT_NAMES, BodyModel
from hmrcli.body.pose_limits import JOINT_LIMITS

__all__ = ["FLAGS", "SIDES", "QualitySettings", "spread", "joint_spread_mm", "camera_spread_pct",
           "truncated_sides", "visible_joints", "pose_limit_excess", "score_of", "flags_of",
           "regress_quality", "fit_quality", "add_regress_quality", "add_fit_quality"]

FLAGS: tuple[str, ...] = ("truncated", "low_visibility", "rois_disagree", "behind_camera", "implausible_pose", "tiny")
SIDES: tuple[str, ...] = ("left", "top", "right", "bottom")
_LHIP, _RHIP = 11, 12  # COCO-17


@dataclass(frozen=True)
class QualitySettings:
    """Thresholds of the flags and scales of the score (module docstring). Units: pixels,
    millimetres, percent, radians."""

    border_px: float = 3.0  # a box edge within this (pixels) of the image border counts as cut there ...
    border_frac: float = 0.01  # ... or within this fraction of the image's width (left/right) or height
    tiny_px: float = 64.0  # box height (pixels) below which a person is ``tiny``
    min_visible: int = 11  # visible COCO keypoints (of 17) below which ``low_visibility``
    visible_conf: float = 0.5  # fit: landmark confidence that counts as seen
    spread_min_vis: float = 0.5  # fit: per-RoI landmark visibility that enters the spread
    limit_tolerance_rad: float = 0.25  # excess over the joint limits that flags ``implausible_pose``
    # rois_disagree thresholds
    regress_joint_spread_mm: float = 50.0
    regress_camera_spread_pct: float = 10.0
    fit_spread_box_pct: float = 10.0
    fit_spread_3d_mm: float = 200.0
    # score: each measure m enters the consistency factor as max(0, m - floor) / scale
    floor_joint_spread_mm: float = 20.0
    scale_joint_spread_mm: float = 50.0
    floor_camera_spread_pct: float = 2.0
    scale_camera_spread_pct: float = 10.0
    floor_spread_box_pct: float = 1.0
    scale_spread_box_pct: float = 16.0
    floor_spread_3d_mm: float = 40.0
    scale_spread_3d_mm: float = 500.0
    floor_residual_box_pct: float = 1.0
    scale_residual_box_pct: float = 8.0
    floor_residual_3d_mm: float = 20.0
    scale_residual_3d_mm: float = 25.0
    truncated_factor: float = 0.8
    implausible_factor: float = 0.5


DEFAULT = QualitySettings()


# -- the measures (pure functions) ------------------------------------------------------------

def spread(points: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """RMS distance of M estimates of J points from their mean: points (M, J, D), valid (M, J)
    bool (None: all). Returns per point (J,) (NaN where fewer than 2 estimates are valid) and
    the mean over the points that have a value (NaN when none has). One of M estimates
    shifted by d from the others gives ``d sqrt(M - 1) / M`` (0.4 d for M = 5)."""
    p = np.asarray(points, dtype=np.float64)
    ok = np.isfinite(p).all(-1) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(p).all(-1))
    n = ok.sum(0)  # (J,)
    # offsets from each point's first valid estimate (identical estimates: exactly 0)
    ref = np.take_along_axis(p, np.argmax(ok, axis=0)[None, :, None], axis=0)
    q = np.where(ok[..., None], p - ref, 0.0)
    mean = q.sum(0) / np.maximum(n, 1)[:, None]
    d2 = (np.where(ok, ((q - mean[None]) ** 2).sum(-1), 0.0)).sum(0) / np.maximum(n, 1)
    per = np.where(n >= 2, np.sqrt(d2), np.nan)
    overall = float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")
    return per, overall


def joint_spread_mm(roi_joints: np.ndarray) -> tuple[np.ndarray, float]:
    """:func:`spread` of the RoIs' posed joints (M, J, 3) metres after aligning each RoI's
    pelvis (joint 0) at the origin, in millimetres."""
    j = np.asarray(roi_joints, dtype=np.float64)
    per, overall = spread(j - j[:, :1])
    return per * 1000.0, overall * 1000.0


def camera_spread_pct(roi_cam_t: np.ndarray) -> float:
    """RMS distance of M full-image camera translations (M, 3) metres from their mean, in %
    of the mean depth (NaN for fewer than 2 RoIs or a mean depth <= 0)."""
    t = np.asarray(roi_cam_t, dtype=np.float64).reshape(-1, 3)
    if len(t) < 2 or not np.all(np.isfinite(t)):
        return float("nan")
    z = float(t[:, 2].mean())
    if z <= 0:
        return float("nan")
    return float(np.sqrt(((t - t.mean(0)) ** 2).sum(-1).mean()) / z * 100.0)


def truncated_sides(image_wh: tuple[int, int], box_xyxy: np.ndarray | None = None,
                    points: np.ndarray | None = None, border_px: float = DEFAULT.border_px,
                    border_frac: float = DEFAULT.border_frac) -> list[str]:
    """The image sides (of :data:`SIDES`, in that order) where the person is cut: the box
    (x1, y1, x2, y2 pixels; None: not tested) reaches within ``max(border_px, border_frac *
    W)`` of the left/right border (``H`` for top/bottom; detectors stop a few pixels short of
    the border), or a point (N, 2) pixels lies beyond it. Pixel centres are integers, so the
    image spans [-0.5, W - 0.5] x [-0.5, H - 0.5]."""
    w, h = float(image_wh[0]), float(image_wh[1])
    lo = np.array([-0.5, -0.5])
    hi = np.array([w - 0.5, h - 0.5])
    mx, my = max(border_px, border_frac * w), max(border_px, border_frac * h)
    cut = {s: False for s in SIDES}
    if box_xyxy is not None:
        b = np.asarray(box_xyxy, dtype=np.float64).reshape(4)
        cut["left"] |= bool(b[0] <= lo[0] + mx)
        cut["top"] |= bool(b[1] <= lo[1] + my)
        cut["right"] |= bool(b[2] >= hi[0] - mx)
        cut["bottom"] |= bool(b[3] >= hi[1] - my)
    if points is not None:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        p = p[np.isfinite(p).all(1)]
        if len(p):
            cut["left"] |= bool((p[:, 0] < lo[0]).any())
            cut["top"] |= bool((p[:, 1] < lo[1]).any())
            cut["right"] |= bool((p[:, 0] > hi[0]).any())
            cut["bottom"] |= bool((p[:, 1] > hi[1]).any())
    return [s for s in SIDES if cut[s]]


def visible_joints(kp2d: np.ndarray, image_wh: tuple[int, int], depth: np.ndarray | None = None,
                   conf: np.ndarray | None = None, min_conf: float = DEFAULT.visible_conf) -> int:
    """How many keypoints (N, 2) pixels lie inside the image, in front of the camera (depth
    (N,) metres > 0; None: not tested) and, with ``conf`` (N,), have confidence >= ``min_conf``."""
    p = np.asarray(kp2d, dtype=np.float64).reshape(-1, 2)
    w, h = image_wh
    ok = np.isfinite(p).all(1) & (p[:, 0] >= -0.5) & (p[:, 1] >= -0.5) & (p[:, 0] <= w - 0.5) & (p[:, 1] <= h - 0.5)
    if depth is not None:
        ok &= np.asarray(depth, dtype=np.float64).reshape(-1) > 0
    if conf is not None:
        ok &= np.asarray(conf, dtype=np.float64).reshape(-1) >= min_conf
    return int(ok.sum())


def pose_limit_excess(rotmats: np.ndarray) -> np.ndarray:
    """(23,) radians: per body joint (1..23), the largest amount by which a component of its
    axis-angle rotation exceeds the joint-limit table (:data:`hmrcli.body.pose_limits.JOINT_LIMITS`;
    0 inside the limits). rotmats (24, 3, 3), joint 0 (global orientation) is not limited."""
    aa = roma.rotmat_to_rotvec(torch.as_tensor(np.asarray(rotmats, dtype=np.float64)[1:24])).numpy()
    lo, hi = JOINT_LIMITS[..., 0], JOINT_LIMITS[..., 1]
    return np.maximum(np.maximum(lo - aa, aa - hi), 0.0).max(1)


def score_of(terms: dict[str, float], visible: int, height_px: float, box_score: float | None,
             flags: Sequence[str], rois_used: int | None = None, rois: int | None = None,
             settings: QualitySettings = DEFAULT) -> tuple[float, dict[str, float]]:
    """The score in [0, 1] and its factors (module docstring). ``terms``: {name: x_k / s_k}
    (non-finite values are left out)."""
    z = sum(v for v in terms.values() if np.isfinite(v))
    consistency = float(np.exp(-z))
    if rois and rois_used is not None:
        consistency *= max(0, min(rois_used, rois)) / rois
    visibility = min(1.0, max(0, visible) / 17.0)
    size = min(1.0, max(0.0, float(height_px)) / (2.0 * settings.tiny_px))
    box = 1.0 if box_score is None or not np.isfinite(box_score) else 0.5 + 0.5 * min(1.0, max(0.0, float(box_score)))
    penalty = 0.0 if "behind_camera" in flags else 1.0
    if "implausible_pose" in flags:
        penalty *= settings.implausible_factor
    if "truncated" in flags:
        penalty *= settings.truncated_factor
    score = consistency * visibility * size * box * penalty
    comps = {"consistency": consistency, "visibility": visibility, "size": size, "box": box, "penalty": penalty}
    return float(min(1.0, max(0.0, score))), comps


def flags_of(truncated: Sequence[str], visible: int, disagree: bool, min_depth: float, limit_excess: float,
             height_px: float, settings: QualitySettings = DEFAULT) -> list[str]:
    """The flags (of :data:`FLAGS`, in that order) that apply."""
    on = {"truncated": bool(truncated), "low_visibility": visible < settings.min_visible,
          "rois_disagree": bool(disagree), "behind_camera": not (min_depth > 0),
          "implausible_pose": limit_excess > settings.limit_tolerance_rad, "tiny": height_px < settings.tiny_px}
    return [f for f in FLAGS if on[f]]


def _term(x: float, floor: float, scale: float) -> float:
    """A measure's share of the consistency exponent: max(0, x - floor) / scale (NaN stays NaN)."""
    return max(0.0, x - floor) / scale if np.isfinite(x) else float("nan")


# -- JSON helpers ------------------------------------------------------------------------------

def _r(x: float, nd: int) -> float | None:
    return round(float(x), nd) if x is not None and np.isfinite(x) else None


def _block(per: np.ndarray, overall: float, nd: int = 1) -> dict[str, Any]:
    return {"overall": _r(overall, nd), "per_joint": [_r(v, nd) for v in np.asarray(per, dtype=np.float64)]}


def _common(est: Any, kp_cam: np.ndarray, joints_cam: np.ndarray, settings: QualitySettings,
            extra_points: np.ndarray | None = None, conf: np.ndarray | None = None) -> dict[str, Any]:
    """What both engines measure: truncation, visibility, box, size, depth, joint limits."""
    w, h = est.image_wh
    K = np.asarray(est.K, dtype=np.float64)
    z = kp_cam[:, 2]
    uv = kp_cam[:, :2] / np.where(np.abs(z) < 1e-9, 1e-9, z)[:, None] * np.diag(K)[:2] + K[:2, 2]
    box = np.asarray(est.box.xyxy, dtype=np.float64)
    pts = uv[z > 0]
    if extra_points is not None:
        pts = np.concatenate([pts, np.asarray(extra_points, dtype=np.float64).reshape(-1, 2)])
    sides = truncated_sides((w, h), None if est.box.source == "whole-image" else box, pts, settings.border_px,
                            settings.border_frac)
    vis = visible_joints(uv, (w, h), depth=z, conf=conf, min_conf=settings.visible_conf)
    excess = pose_limit_excess(est.rotmats)
    names = [JOINT_NAMES[j + 1] for j in np.flatnonzero(excess > settings.limit_tolerance_rad)]
    return {"truncated": sides, "visible_joints": vis, "box_score": _r(est.box.score, 4) if est.box.score is not None else None,
            "height_px": round(float(box[3] - box[1]), 1), "min_depth_m": float(np.min(joints_cam[:, 2])),
            "pose_limit_excess_rad": round(float(excess.max()), 3), "joints_beyond_limits": names}


def _finish(q: dict[str, Any], terms: dict[str, float], disagree: bool, settings: QualitySettings,
            rois_used: int | None = None, rois: int | None = None) -> dict[str, Any]:
    flags = flags_of(q["truncated"], q["visible_joints"], disagree, q.pop("min_depth_m"),
                     q["pose_limit_excess_rad"], q["height_px"], settings)
    score, comps = score_of(terms, q["visible_joints"], q["height_px"], q["box_score"], flags, rois_used, rois, settings)
    return {"score": round(score, 4), "flags": flags, **q, "components": {k: round(v, 4) for k, v in comps.items()}}


def _keypoints(body_coco: tuple[np.ndarray, np.ndarray], est: Any) -> np.ndarray:
    """The estimate's COCO-17 keypoints in the model frame (17, 3) metres."""
    wv, wj = body_coco
    return wv @ np.asarray(est.vertices_model, dtype=np.float64) + wj @ np.asarray(est.joints_model, dtype=np.float64)


# -- per engine -------------------------------------------------------------------------------

def regress_quality(est: Any, roi_joints: np.ndarray | None, keypoints_model: np.ndarray,
                    settings: QualitySettings = DEFAULT) -> dict[str, Any]:
    """The quality block of a regression estimate (:class:`hmrcli.engine.base.PersonEstimate`):
    ``roi_joints`` (M, 24, 3) metres, each RoI's own pose and shape posed through the body
    model (None when the network gives no per-RoI poses); the RoIs' local cameras and boxes
    come from the estimate; ``keypoints_model`` (17, 3) its COCO keypoints before the camera
    translation."""
    t = np.asarray(est.cam_t, dtype=np.float64)
    q = _common(est, keypoints_model + t, np.asarray(est.joints_model) + t, settings)
    rois = np.asarray(est.rois, dtype=np.float64)
    m = len(rois)
    K = np.asarray(est.K, dtype=np.float64)
    roi_t = G.local_to_full(np.asarray(est.cams_local, dtype=np.float64), rois,
                            np.broadcast_to(np.asarray(est.image_wh, dtype=np.float64), (m, 2)),
                            np.full(m, float(est.focal)), principal=np.broadcast_to(K[:2, 2], (m, 2)))
    cam = camera_spread_pct(roi_t)
    if roi_joints is not None and m >= 2:
        per, overall = joint_spread_mm(roi_joints)
    else:
        per, overall = np.full(24, np.nan), float("nan")
    terms = {"joint_spread": _term(overall, settings.floor_joint_spread_mm, settings.scale_joint_spread_mm),
             "camera_spread": _term(cam, settings.floor_camera_spread_pct, settings.scale_camera_spread_pct)}
    disagree = bool((np.isfinite(overall) and overall > settings.regress_joint_spread_mm)
                    or (np.isfinite(cam) and cam > settings.regress_camera_spread_pct))
    q = {"engine": "regress", "rois": m, **q, "joints": "SMPL-24 (joint_spread_mm.per_joint, pelvis-aligned)",
         "joint_spread_mm": _block(per, overall), "camera_spread_pct": _r(cam, 2)}
    if roi_joints is None and m >= 2:
        q["note"] = "the network gave no per-RoI poses (e.g. an ONNX graph): joint_spread_mm not measured"
    return _finish(q, terms, disagree, settings)


def fit_quality(est: Any, lm: Any, keypoints_model: np.ndarray, settings: QualitySettings = DEFAULT) -> dict[str, Any]:
    """The quality block of a fitted estimate: ``lm`` its :class:`hmrcli.fit.landmarks.PersonLandmarks`
    (with the per-RoI sets), ``keypoints_model`` (17, 3) the fitted COCO keypoints before the
    camera translation."""
    t = np.asarray(est.cam_t, dtype=np.float64)
    kp_cam = keypoints_model + t
    conf = np.asarray(lm.conf2d, dtype=np.float64)
    q = _common(est, kp_cam, np.asarray(est.joints_model) + t, settings, extra_points=lm.kp2d, conf=conf)
    b = float(np.asarray(lm.rois)[0, 2])
    m = int(len(lm.rois))
    if lm.roi_kp2d is not None:
        seen = (np.asarray(lm.roi_vis) >= settings.spread_min_vis) & np.asarray(lm.roi_in_crop, dtype=bool)
        per2, all2 = spread(lm.roi_kp2d, seen)
        per3, all3 = spread(np.asarray(lm.roi_kp3d) * 1000.0, seen)
    else:
        per2, all2, per3, all3 = np.full(17, np.nan), float("nan"), np.full(17, np.nan), float("nan")
    used = conf > 0
    K = np.asarray(est.K, dtype=np.float64)
    uv = G.project(kp_cam, K)
    r2 = np.where(used, np.linalg.norm(uv - np.asarray(lm.kp2d), axis=1), np.nan)
    kc = keypoints_model - 0.5 * (keypoints_model[_LHIP] + keypoints_model[_RHIP])
    l3 = np.asarray(lm.kp3d, dtype=np.float64)
    lc = l3 - 0.5 * (l3[_LHIP] + l3[_RHIP])
    r3 = np.where(used, np.linalg.norm(kc - lc, axis=1) * 1000.0, np.nan)
    res2 = float(np.nanmean(r2)) if used.any() else float("nan")
    res3 = float(np.nanmean(r3)) if used.any() else float("nan")
    spread_pct = all2 / b * 100.0
    rois_used = int(np.asarray(lm.rois_ok).sum())
    views, views_used = int(lm.num_views), int(lm.views_used)
    terms = {"landmark_spread": _term(spread_pct, settings.floor_spread_box_pct, settings.scale_spread_box_pct),
             "landmark_spread_3d": _term(all3, settings.floor_spread_3d_mm, settings.scale_spread_3d_mm),
             "residual_2d": _term(res2 / b * 100.0, settings.floor_residual_box_pct, settings.scale_residual_box_pct),
             "residual_3d": _term(res3, settings.floor_residual_3d_mm, settings.scale_residual_3d_mm)}
    disagree = bool((np.isfinite(spread_pct) and spread_pct > settings.fit_spread_box_pct)
                    or (np.isfinite(all3) and all3 > settings.fit_spread_3d_mm)
                    or (views >= 2 and views_used < views / 2))
    q = {"engine": "fit", "rois": m, "rois_used": rois_used, "views": views, "views_used": views_used, **q, "joints": "COCO-17 (hmrcli.body.COCO17_NAMES)",
         "box_px": round(b, 1), "landmarks_used": int(used.sum()),
         "landmark_spread_px": _block(per2, all2, 2), "landmark_spread_box_pct": _block(per2 / b * 100.0, spread_pct, 2),
         "landmark_spread_3d_mm": _block(per3, all3), "residual_2d_px": _block(r2, res2, 2),
         "residual_3d_mm": _block(r3, res3)}
    return _finish(q, terms, disagree, settings, views_used, views)


# -- batches (one call per engine batch) --------------------------------------------------------

def add_regress_quality(body: BodyModel, ests: Sequence[Any], roi_rotmats: Any, roi_betas: Any, betas_applied: bool,
                        settings: QualitySettings = DEFAULT) -> None:
    """Set ``est.quality`` of a batch of regression estimates. roi_rotmats (B, M, 24, 3, 3)
    and roi_betas (B, M, 10): each RoI's own estimate (tensors or arrays; None when the
    network gives none); betas are applied as for the person's mesh (``betas_applied``)."""
    if not ests:
        return
    roi_joints: np.ndarray | None = None
    if roi_rotmats is not None:
        # posed where the network ran (the engine's device: on CUDA the B*M bodies stay off the
        # host), only the joints come back
        rot = torch.as_tensor(roi_rotmats).detach().to(dtype=torch.float64)
        b, m = rot.shape[:2]
        betas = None
        if betas_applied and roi_betas is not None:
            betas = torch.as_tensor(roi_betas).detach().to(device=rot.device, dtype=torch.float64).reshape(b * m, -1)
        roi_joints = body(rot.reshape(b * m, 24, 3, 3), betas).joints.cpu().numpy().reshape(b, m, 24, 3)
    coco = body.coco_regressor
    for k, est in enumerate(ests):
        est.quality = regress_quality(est, None if roi_joints is None else roi_joints[k], _keypoints(coco, est), settings)


def add_fit_quality(body: BodyModel, ests: Sequence[Any], landmarks: Sequence[Any],
                    settings: QualitySettings = DEFAULT) -> None:
    """Set ``est.quality`` of a batch of fitted estimates from their landmarks."""
    if not ests:
        return
    coco = body.coco_regressor
    for est, lm in zip(ests, landmarks):
        est.quality = fit_quality(est, lm, _keypoints(coco, est), settings)

