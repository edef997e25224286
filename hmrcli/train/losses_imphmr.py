"""ImpHMR's training losses (the paper's Eq. 5-7; docs/method.md §10), on top of
:class:`hmrcli.train.losses.MultiRoILoss`.

One training step runs the backbone once and the feature field for two viewing directions
(:meth:`hmrcli.nn.imphmr.ImpHMR.forward_views`): the canonical view ``xi = 0`` and one azimuth
per person drawn uniformly from ``[-view_azimuth_range, view_azimuth_range]`` degrees (the
paper's distribution ``p_xi`` is not given in the text; uniform over the horizontal circle
by default).

* **canonical-view regression** (Eq. 5): every term of :class:`MultiRoILoss` (2D/3D
  keypoints, pose, betas, vertices; with M > 1 also camera consistency and contrast) on the
  canonical output: the names of :data:`hmrcli.train.losses.LOSS_TERMS`.
* **arbitrary-view imagination** (Eq. 6), rows with SMPL ground truth: the output for the
  sampled azimuth ``xi`` against the ground truth *rotated by* ``xi``: the global orientation
  ``R_y(xi)^T R_0`` (:func:`hmrcli.nn.imphmr.azimuth_rotation`), the other 23 rotations and
  the betas unchanged, the 3D joints ``R_y(xi)^T J`` (hip-centred): terms ``view_kp3d``,
  ``view_pose``, ``view_betas``, weighted ``view x`` (kp3d, pose, betas) weights;
* **silhouette** (geometric guidance), same rows: the guidance branch's silhouette at ``xi``
  (sigmoid of its logits) against the ground-truth mesh, rotated the same way, pelvis-centred,
  rasterised by hmrcli's own renderer (:func:`hmrcli.render.raster.rasterize`) into the
  S x S square of side ``silhouette_extent`` metres the field's cube spans (a camera 20 m
  away with the matching focal length: near-orthographic, like the field's parallel rays).
  Squared error per pixel: term ``silhouette``. The rasteriser is not differentiable (binary
  coverage) and need not be: the rendered silhouette is a *target* (the paper renders it
  with NMR for the same purpose); the gradient flows through the guidance branch into the
  rendered feature map, the field and the encoder;
* **appearance consistency** (Eq. 7), rows *without* SMPL ground truth: the estimate for
  ``xi`` with its global orientation turned back, ``R_y(xi) R_0(xi)``, equals the canonical
  estimate (all 24 rotations and the betas; squared error): term ``consistency``. (The paper
  compares two sampled views; hmrcli compares the sampled view with the canonical one, which
  the step renders anyway.)

``total = MultiRoILoss total + scale * (view * (kp3d * view_kp3d + pose * view_pose + betas *
view_betas) + silhouette * silhouette_term + consistency * consistency_term)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from hmrcli.nn.imphmr import azimuth_rotation
from hmrcli.nn.multiroi import RegressorOutput
from hmrcli.render.raster import rasterize
from hmrcli.train.data import spin24_from_body
from hmrcli.train.losses import (
    SPIN24_BODY_CONF,
    LossResult,
    MultiRoILoss,
    Targets,
    _mask,
    _zero,
    keypoint_3d_loss,
)

__all__ = ["IMPHMR_TERMS", "ImpHMRLoss", "ImpHMRStep", "rotate_ground_truth", "silhouettes"]

IMPHMR_TERMS = ("view_kp3d", "view_pose", "view_betas", "silhouette", "consistency")
SILHOUETTE_CAMERA_DISTANCE = 20.0  # metres


@dataclass
class ImpHMRStep:
    """What :meth:`ImpHMRLoss.run_model` returns: the canonical and the sampled-view outputs."""

    canonical: RegressorOutput
    view: RegressorOutput
    azimuth: torch.Tensor  # (B,) radians


def rotate_ground_truth(rot: torch.Tensor, xi: torch.Tensor, points: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ground truth seen from azimuth ``xi`` (B,): rotations (B, 24, 3, 3) with the global
    orientation turned by ``R_y(xi)^T``; ``points`` (B, J, 3 or 4) turned the same way (a 4th
    confidence column is kept)."""
    r = azimuth_rotation(xi.to(rot.dtype)).transpose(-1, -2)  # R_y(xi)^T
    out = rot.clone()
    out[:, 0] = r @ rot[:, 0]
    if points is None:
        return out, None
    xyz = torch.einsum("bij,bkj->bki", r.to(points.dtype), points[..., :3])
    return out, torch.cat([xyz, points[..., 3:]], -1)


@torch.no_grad()
def silhouettes(vertices: torch.Tensor, faces: torch.Tensor, size: int, extent: float) -> torch.Tensor:
    """Binary silhouettes (B, size, size) float of meshes (B, V, 3) (metres, camera axes,
    centred where the square's centre is): the square of side ``extent`` metres around the
    origin, seen along +z by a camera :data:`SILHOUETTE_CAMERA_DISTANCE` m away whose focal
    length maps ``extent`` to ``size`` pixels. Pixel (i, j) centre = ``((j + 0.5) e / S - e/2,
    (i + 0.5) e / S - e/2)`` metres, the field's pixel grid."""
    dist = SILHOUETTE_CAMERA_DISTANCE
    f = dist * size / extent
    c = (size - 1) / 2.0
    k = torch.tensor([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]], dtype=torch.float64, device=vertices.device)
    out = torch.zeros(vertices.shape[0], size * size, device=vertices.device)
    fc = faces.to(vertices.device)
    for i, v in enumerate(vertices.double()):
        tri = (v + torch.tensor([0.0, 0.0, dist], dtype=v.dtype, device=v.device))[fc]
        frags = rasterize(tri, k, size, size)
        out[i, frags.pix] = 1.0
    return out.reshape(-1, size, size)


class ImpHMRLoss(MultiRoILoss):
    """ImpHMR's criterion: ``run_model(model, crops, bbox_info) -> ImpHMRStep``, then
    ``loss(step, targets) -> LossResult`` (module docstring)."""

    def __init__(self, body: Any, cfg: Any, crop_hw: tuple[int, int], aggregation: str = "code"):
        super().__init__(body, cfg, crop_hw, aggregation)
        self._faces = torch.as_tensor(body.faces, dtype=torch.int64)

    def sample_azimuths(self, b: int) -> torch.Tensor:
        """(B,) azimuths in radians, uniform in [-range, range] (the global torch RNG: a resumed
        run draws the same)."""
        r = math.radians(self.cfg.view_azimuth_range)
        return (torch.rand(b) * 2.0 - 1.0) * r

    def run_model(self, model: Any, crops: torch.Tensor, bbox_info: torch.Tensor) -> ImpHMRStep:
        xi = self.sample_azimuths(crops.shape[0]).to(crops.device)
        canon, view = model.forward_views(crops, bbox_info, [torch.zeros_like(xi), xi],
                                          silhouettes=[False, self.cfg.silhouette > 0], return_proj=self.needs_proj)
        return ImpHMRStep(canonical=canon, view=view, azimuth=xi)

    def __call__(self, step: ImpHMRStep, t: Targets) -> LossResult:  # type: ignore[override]
        base = super().__call__(step.canonical, t)
        with torch.autocast(device_type=step.view.cams.device.type, enabled=False):
            total, terms = self._views(step, t)
        terms = {**base.terms, **{k: v.detach() for k, v in terms.items()}}
        return LossResult(total=base.total + total, terms=terms)

    def _views(self, step: ImpHMRStep, t: Targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        out = step.view
        b, m = out.cams.shape[:2]
        rot = out.rotmats.float().reshape(b * m, 24, 3, 3)
        betas = out.betas.float().reshape(b * m, -1)
        xi = step.azimuth.float()
        xi_rows = xi.repeat_interleave(m)
        has = _mask(t.has_smpl, b, out.cams.device)
        terms: dict[str, torch.Tensor] = {}
        w = {"view_kp3d": cfg.view * cfg.kp3d, "view_pose": cfg.view * cfg.pose, "view_betas": cfg.view * cfg.betas,
             "silhouette": cfg.silhouette, "consistency": cfg.consistency}
        rows = has.repeat_interleave(m)
        gt_rot = None
        if t.pose is not None and t.pose.shape[-2:] == (3, 3):
            gt_rot = t.pose.float()
        elif t.pose is not None:
            from hmrcli.geometry.rotations import axis_angle_to_rotmat

            gt_rot = axis_angle_to_rotmat(t.pose.float().reshape(b, 24, 3))
        if gt_rot is not None and bool(has.any()):
            g_rot, g_j = rotate_ground_truth(gt_rot, xi, None if t.joints_3d is None else t.joints_3d.float())
            g_rot_rows = g_rot.repeat_interleave(m, 0)
            if w["view_pose"] > 0:
                terms["view_pose"] = torch.nn.functional.mse_loss(rot[rows], g_rot_rows[rows])
            if w["view_betas"] > 0 and t.betas is not None:
                n = min(betas.shape[-1], t.betas.shape[-1])
                terms["view_betas"] = torch.nn.functional.mse_loss(
                    betas[rows][:, :n], t.betas.float().repeat_interleave(m, 0)[rows][:, :n])
            if w["view_kp3d"] > 0 and g_j is not None:
                pred = self.body(rot, betas)
                j24 = spin24_from_body(pred.joints, pred.keypoints_coco)
                jw = torch.tensor(SPIN24_BODY_CONF.tolist(), dtype=torch.float32, device=rot.device)
                valid = rows if t.has_joints_3d is None else rows & (t.has_joints_3d.repeat_interleave(m) > 0)
                terms["view_kp3d"] = keypoint_3d_loss(j24, g_j.repeat_interleave(m, 0), valid, jw)
            if w["silhouette"] > 0:
                sil = out.extras.get("silhouette") if out.extras else None
                if sil is None:
                    raise ValueError("losses.silhouette > 0 needs the view's silhouette (forward_views(silhouettes=...))")
                s = sil.shape[-1]
                with torch.no_grad():
                    gt_b = t.betas.float() if t.betas is not None else None
                    g_out = self.body(g_rot[has], None if gt_b is None else gt_b[has])
                    target = silhouettes(g_out.vertices - g_out.joints[:, :1], self._faces, s, cfg.silhouette_extent)
                prob = torch.sigmoid(sil.float()[has])  # (b', M, S, S)
                terms["silhouette"] = ((prob - target[:, None]) ** 2).mean()
        if w["consistency"] > 0 and bool((~has).any()):
            canon = step.canonical
            sel = (~has).repeat_interleave(m)
            back = azimuth_rotation(xi_rows).to(rot.dtype)  # R_y(xi): turns the view's orientation back
            rot_back = rot.clone()
            rot_back[:, 0] = back @ rot[:, 0]
            c_rot = canon.rotmats.float().reshape(b * m, 24, 3, 3)
            c_betas = canon.betas.float().reshape(b * m, -1)
            terms["consistency"] = (torch.nn.functional.mse_loss(rot_back[sel], c_rot[sel])
                                    + torch.nn.functional.mse_loss(betas[sel], c_betas[sel]))
        for k in IMPHMR_TERMS:
            if w[k] > 0 and k not in terms:
                terms[k] = _zero(out.cams)
        total = sum(w[k] * v for k, v in terms.items()) * cfg.scale
        if not isinstance(total, torch.Tensor):
            total = _zero(out.cams)
        return total, terms
