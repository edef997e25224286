"""PointHMR's training losses (docs/method.md §11), on top of
:class:`hmrcli.train.losses.MultiRoILoss`.

* the :class:`MultiRoILoss` terms (2D/3D keypoints, pose, betas, vertices) on the
  parameter head's output (what the engine poses the body model with; PointHMR's
  mapping to the body model, :mod:`hmrcli.nn.pointhmr`);
* ``heatmap``: squared error of the N0 vertex heatmaps (B, N0, h, w) against Gaussians
  (std ``heatmap_sigma`` cells at a 56-cell-wide map, scaled with the map's width) centred
  at the ground-truth coarse vertices projected into the crop: ``X = body(pose, betas) +
  cam_t`` through ``K`` into the full image, the image -> crop affine of RoI 0, then crop
  pixels -> heatmap cells (pixel centres: ``u_cell = (u + 0.5) w / W - 0.5``). Rows with
  SMPL ground truth *and* a known ``cam_t`` only;
* ``point_vertices``: L1 of the regressed vertices at the three resolutions (coarse N0,
  mid N1, full V) against the pelvis-centred ground-truth mesh down-sampled by the same
  selection (:mod:`hmrcli.nn.mesh_sampling`), summed over the levels; SMPL rows;
* ``point_joints``: the 14 joint tokens against SPIN joints 0..13 (LSP order; hip-centred,
  confidence-weighted squared error as ``kp3d``), plus L1 of the 24 joints the body model's
  joint regressor gives on the regressed full mesh against the same regressor on the
  pelvis-centred ground-truth mesh (SMPL rows);
* ``point_kp2d``: the joint tokens (plus the pelvis position of the parameter head's body,
  detached, which the camera translation refers to) projected with the camera token's camera
  exactly as the ``kp2d`` term projects (full-image camera, then RoI crop coordinates),
  against the 2D keypoints 0..13.

``total = MultiRoILoss total + scale * (heatmap * L_hm + point_vertices * L_v +
point_joints * L_j + point_kp2d * L_2d)``. The weights are hmrcli's choice (the main paper,
which would state them, is not among the sources; docs/method.md §11).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hmrcli.geometry.bbox_info import default_focal
from hmrcli.geometry.cameras import intrinsics, project
from hmrcli.geometry.crops import crop_affine, map_points
from hmrcli.geometry.rotations import axis_angle_to_rotmat
from hmrcli.nn.multiroi import RegressorOutput
from hmrcli.train.losses import (
    SPIN24_BODY_CONF,
    LossResult,
    MultiRoILoss,
    Targets,
    _mask,
    _zero,
    full_camera_keypoints,
    image_to_crop_coords,
    keypoint_2d_loss,
    keypoint_3d_loss,
)

__all__ = ["POINTHMR_TERMS", "PointHMRLoss", "gaussian_heatmaps", "heatmap_coordinates"]

POINTHMR_TERMS = ("heatmap", "point_vertices", "point_joints", "point_kp2d")
LSP14 = 14


def heatmap_coordinates(points_crop_px: torch.Tensor, crop_hw: tuple[int, int], map_hw: tuple[int, int]) -> torch.Tensor:
    """Crop pixels (..., 2) -> heatmap cells (..., 2) (cell and pixel centres aligned)."""
    h, w = crop_hw
    mh, mw = map_hw
    scale = torch.tensor([mw / w, mh / h], dtype=points_crop_px.dtype, device=points_crop_px.device)
    return (points_crop_px + 0.5) * scale - 0.5


def gaussian_heatmaps(cells: torch.Tensor, map_hw: tuple[int, int], sigma: float) -> torch.Tensor:
    """(B, N, 2) cell coordinates (x, y) -> (B, N, h, w) ``exp(-d^2 / (2 sigma^2))``."""
    mh, mw = map_hw
    ys = torch.arange(mh, dtype=cells.dtype, device=cells.device)
    xs = torch.arange(mw, dtype=cells.dtype, device=cells.device)
    dx = xs[None, None, None, :] - cells[..., 0, None, None]
    dy = ys[None, None, :, None] - cells[..., 1, None, None]
    return torch.exp(-(dx**2 + dy**2) / (2.0 * sigma**2))


class PointHMRLoss(MultiRoILoss):
    """PointHMR's criterion: ``loss(out, targets) -> LossResult`` (module docstring). ``body``:
    the training body model (its joint regressor and the mesh the sampling was derived for);
    ``down``: the model's ``(down0, down1)`` full-mesh indices of the coarse and mid vertices."""

    def __init__(self, body: Any, cfg: Any, crop_hw: tuple[int, int], down: tuple[torch.Tensor, torch.Tensor]):
        super().__init__(body, cfg, crop_hw, "code")
        self.down = (torch.as_tensor(down[0]).long(), torch.as_tensor(down[1]).long())

    def __call__(self, out: RegressorOutput, t: Targets) -> LossResult:  # type: ignore[override]
        base = super().__call__(out, t)
        with torch.autocast(device_type=out.cams.device.type, enabled=False):
            total, terms = self._points(out, t)
        return LossResult(total=base.total + total, terms={**base.terms, **{k: v.detach() for k, v in terms.items()}})

    def _points(self, out: RegressorOutput, t: Targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        ex = out.extras or {}
        for key in ("heatmaps", "vertices0", "vertices1", "vertices", "joints"):
            if key not in ex:
                raise ValueError(f"PointHMR's losses need the model's extras[{key!r}] (a PointHMR model)")
        heat, v0, v1, v = (ex[k].float() for k in ("heatmaps", "vertices0", "vertices1", "vertices"))
        joints = ex["joints"].float()
        b = v.shape[0]
        dev = v.device
        w = {"heatmap": cfg.heatmap, "point_vertices": cfg.point_vertices, "point_joints": cfg.point_joints,
             "point_kp2d": cfg.point_kp2d}
        terms: dict[str, torch.Tensor] = {}
        has = _mask(t.has_smpl, b, dev)
        down0, down1 = (d.to(dev) for d in self.down)
        gt = None
        if t.pose is not None and t.betas is not None and bool(has.any()) and (
                w["heatmap"] > 0 or w["point_vertices"] > 0 or w["point_joints"] > 0):
            rot = t.pose.float()
            if rot.shape[-2:] != (3, 3):
                rot = axis_angle_to_rotmat(rot.reshape(b, 24, 3))
            with torch.no_grad():
                gt = self.body(rot, t.betas.float())
        if gt is not None:
            gv = gt.vertices - gt.joints[:, :1]
            if w["point_vertices"] > 0:
                terms["point_vertices"] = (F.l1_loss(v0[has], gv[has][:, down0]) + F.l1_loss(v1[has], gv[has][:, down1])
                                           + F.l1_loss(v[has], gv[has]))
            if w["heatmap"] > 0:
                ok = has & _mask(t.has_cam_t, b, dev) if t.cam_t is not None else torch.zeros_like(has)
                if bool(ok.any()):
                    img_wh = t.img_wh.float()
                    focal = t.focal.float() if t.focal is not None else default_focal(img_wh[:, 0], img_wh[:, 1])
                    k = intrinsics(focal, img_wh[:, 0], img_wh[:, 1])
                    px = project(gt.vertices[:, down0], k, t=t.cam_t.float())  # (B, N0, 2) full image
                    aff = t.affines[:, 0].float() if t.affines is not None else crop_affine(t.rois[:, 0].float(),
                                                                                            self.crop_hw)
                    cells = heatmap_coordinates(map_points(px, aff), self.crop_hw, tuple(heat.shape[-2:]))
                    sigma = max(0.75, cfg.heatmap_sigma * heat.shape[-1] / 56.0)
                    target = gaussian_heatmaps(cells[ok], tuple(heat.shape[-2:]), sigma)
                    terms["heatmap"] = F.mse_loss(heat[ok], target)
        jw = torch.tensor(SPIN24_BODY_CONF.tolist(), dtype=torch.float32, device=dev)
        if w["point_joints"] > 0:
            parts = []
            if t.joints_3d is not None:
                valid = None if t.has_joints_3d is None else t.has_joints_3d
                parts.append(keypoint_3d_loss(joints, t.joints_3d.float()[:, :LSP14], valid, jw[:LSP14]))
            if gt is not None:
                reg = torch.as_tensor(self.body.joint_regressor, dtype=v.dtype, device=dev)
                mj = torch.einsum("jv,bvc->bjc", reg, v)
                gj = torch.einsum("jv,bvc->bjc", reg, gt.vertices - gt.joints[:, :1])
                parts.append(F.l1_loss(mj[has], gj[has]))
            if parts:
                terms["point_joints"] = sum(parts)
        if w["point_kp2d"] > 0 and t.keypoints_2d is not None:
            with torch.no_grad():
                pelvis = self.body(out.person_rotmats.float(), out.person_betas.float()).joints[:, 0]
            pts = (joints + pelvis[:, None])[:, None]  # (B, 1, 14, 3) body-model frame
            focal = None if t.focal is None else t.focal.float()
            px = full_camera_keypoints(pts, out.cams.float(), t.rois.float(), t.img_wh.float(), focal)
            p2d = image_to_crop_coords(px, t.rois.float(), self.crop_hw, t.affines, cfg.kp2d_norm)
            g = t.keypoints_2d.float()[:, None, :LSP14]
            gxy = image_to_crop_coords(g[..., :2], t.rois.float(), self.crop_hw, t.affines, cfg.kp2d_norm)
            terms["point_kp2d"] = keypoint_2d_loss(p2d, torch.cat([gxy, g[..., 2:3]], -1), jw[:LSP14])
        for k in POINTHMR_TERMS:
            if w[k] > 0 and k not in terms:
                terms[k] = _zero(v)
        total = sum(w[k] * val for k, val in terms.items()) * cfg.scale
        if not isinstance(total, torch.Tensor):
            total = _zero(v)
        return total, terms
