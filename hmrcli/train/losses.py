"""Training losses of Multi-RoI HMR (docs/method.md §6, the papers' Eq. 7/11-16/19).

``L = scale * (w2d L2D + w3d L3D + wvert Lvert + wpose Lpose + wbeta Lbeta + wcam Lcam
+ wcon Lcontrast)``, by default ``60 * (5, 5, 1, 1, 0.001, 1, 0.1)`` (the authors' values).
Every term is a function of explicit tensors (usable and testable alone); the
:class:`MultiRoILoss` criterion wires them to a regressor's output, a body model and
the batch targets, and skips every term whose weight is 0 (not computed at all).

Terms (N = B persons x M RoIs rows; every RoI row has its own pose, shape and local
camera, as in the authors' code; ``mesh_source="person"`` uses the person's single
estimate for all rows instead, the papers' shared-mesh reading):

* **L2D** -- each RoI's local camera ``(s, tx, ty)`` is turned into the *full-image*
  perspective camera (:func:`hmrcli.geometry.cameras.local_to_full`, CLIFF), the
  predicted 3D keypoints are projected into the full image with it and mapped into
  *that* RoI's crop (the image -> crop affine, which carries any rotation augmentation),
  then compared with the ground-truth keypoints mapped the same way, in normalised crop
  coordinates, confidence weighted: ``mean(conf * (pred - gt)^2)`` (SPIN/CLIFF).
  ``kp2d_norm="box"``: ``((u - cx)/(b/2), (v - cy)/(b/2))`` (hmrcli's normalised crop
  coordinates, isotropic); ``"crop"``: each axis by its own crop side ``2 x'/w - 1``,
  ``2 y'/h - 1`` (the authors' code).
* **L3D** -- 3D joints centred on the mid-hip point (SPIN joints 2 and 3), confidence
  weighted squared error, rows with 3D ground truth only.
* **Lvert** -- L1 over all mesh vertices, each mesh centred on its pelvis joint, rows
  with SMPL ground truth only (the ground-truth mesh is posed with the same body model).
* **Lpose / Lbeta** -- squared error of the 24 rotation matrices and of the betas.
* **Lcam** -- camera consistency between the M local cameras of a person
  (:func:`hmrcli.geometry.cameras.consistency_loss`: ``form="paper"``, Eq. 13/16, all
  pairs, per-axis weights 0.1/0.1/1e-4; ``form="code"``, every RoI against RoI 0,
  ``(r_x + r_y)^2 + (1e-4 r_s)^2``). 0 for M = 1.
* **Lcontrast** -- supervised contrastive loss (SupCon / SimCLR style) on the
  L2-normalised projection-head outputs, temperature 0.5: anchors are all B*M RoIs,
  positives the other RoIs of the same person, the denominator every other RoI in the
  batch (so the RoIs of other people are the negatives). Like the authors' code the loss
  is averaged over anchors and multiplied by the temperature. 0 when no anchor has a
  positive (M = 1).

Joint sets: the targets are in SPIN's 24-joint order (``part`` / ``S`` of the SPIN/CLIFF
``.npz`` files, :data:`SPIN24_NAMES`). The predicted counterparts come from the body
model's 17 COCO keypoints and 24 skeleton joints through
:func:`hmrcli.train.data.spin24_from_body` (limbs and face from the COCO keypoints;
pelvis, neck and head from the skeleton); joints without a counterpart (head top, thorax,
H36M spine, jaw; :data:`SPIN24_BODY_CONF` 0) get weight 0. The synthetic dataset writes its
``part`` / ``S`` with the same function, so on synthetic data every term is 0 at the
ground truth.

Units: metres (3D), normalised crop coordinates (2D), radians nowhere (rotation
matrices). All terms are computed in float32, also under bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hmrcli.body import BodyModel
from hmrcli.geometry.bbox_info import default_focal
from hmrcli.geometry.cameras import consistency_loss, intrinsics, local_to_full, project
from hmrcli.geometry.crops import crop_affine, crop_pixels_to_normalized, map_points
from hmrcli.geometry.rotations import axis_angle_to_rotmat
from hmrcli.nn.multiroi import RegressorOutput
from hmrcli.train.config import LossConfig
from hmrcli.train.data import SPIN24_BODY_CONF, SPIN24_NAMES, spin24_from_body

__all__ = [
    "LOSS_TERMS",
    "SPIN24_BODY_CONF",
    "SPIN24_NAMES",
    "LossResult",
    "MultiRoILoss",
    "Targets",
    "betas_loss",
    "camera_consistency_loss",
    "full_camera_keypoints",
    "image_to_crop_coords",
    "keypoint_2d_loss",
    "keypoint_3d_loss",
    "pose_loss",
    "spin24_from_body",
    "targets_from_batch",
    "supcon_loss",
    "vertex_loss",
]

#: Names of the loss terms, in the order of the total (also the metric-log keys).
LOSS_TERMS = ("kp2d", "kp3d", "vertices", "pose", "betas", "camera", "contrast")

#: Mid-hip centre used for the 3D joints (SPIN joints 2 and 3, as SPIN/CLIFF/Multi-RoI).
HIPS = (2, 3)


# ------------------------------------------------------------------ geometry helpers


def full_camera_keypoints(
    points: torch.Tensor,
    cams: torch.Tensor,
    rois: torch.Tensor,
    img_wh: torch.Tensor,
    focal: torch.Tensor | None = None,
) -> torch.Tensor:
    """Project body points into the full image with each RoI's *full* camera.

    Args:
        points: (B, M, J, 3) or (B, J, 3) body points (metres, camera axes, relative to
            the body-model origin that the camera translation refers to).
        cams: (B, M, 3) local cameras ``(s, tx, ty)``; rois: (B, M, 3) their boxes
            ``(cx, cy, b)`` (pixels); img_wh: (B, 2); focal: (B,) pixels or None
            (``sqrt(W^2 + H^2)``).
    Returns:
        (B, M, J, 2) full-image pixel coordinates.
    """
    b, m = cams.shape[:2]
    if focal is None:
        focal = default_focal(img_wh[:, 0], img_wh[:, 1])
    t_full = local_to_full(cams, rois, img_wh[:, None, :], focal[:, None])  # (B, M, 3)
    k = intrinsics(focal, img_wh[:, 0], img_wh[:, 1])  # (B, 3, 3)
    if points.dim() == 3:
        points = points[:, None].expand(b, m, -1, -1)
    return project(points, k[:, None], t=t_full)


def image_to_crop_coords(
    points: torch.Tensor,
    rois: torch.Tensor,
    crop_hw: tuple[int, int],
    affines: torch.Tensor | None = None,
    norm: str = "box",
) -> torch.Tensor:
    """Full-image pixels (B, M, J, 2) -> normalised coordinates of each RoI's crop.

    ``affines`` (B, M, 2, 3): image -> crop pixel affines (with any augmentation
    rotation); None: :func:`hmrcli.geometry.crops.crop_affine` of ``rois``. ``norm``:
    ``"box"`` (isotropic, units of b/2) or ``"crop"`` (per axis, ``2 x'/w - 1``).
    """
    if affines is None:
        affines = crop_affine(rois, crop_hw)
    px = map_points(points, affines.to(points.dtype))
    h, w = crop_hw
    if norm == "box":
        return crop_pixels_to_normalized(px, (h, w))
    if norm == "crop":
        return torch.stack([2.0 * px[..., 0] / w - 1.0, 2.0 * px[..., 1] / h - 1.0], dim=-1)
    raise ValueError(f"kp2d_norm must be 'box' or 'crop', got {norm!r}")


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A 0 that stays in the autograd graph of ``like``."""
    return like.sum() * 0.0


def _mask(valid: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    if valid is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return valid.reshape(n).to(device=device) > 0


# ------------------------------------------------------------------ the terms


def keypoint_2d_loss(pred: torch.Tensor, gt: torch.Tensor, joint_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Confidence-weighted squared 2D error ``mean(conf * (pred - gt)^2)`` (SPIN/CLIFF).

    pred (..., J, 2); gt (..., J, 3) with the confidence last; joint_weights (J,)
    multiplies the confidence (0 for joints without a predicted counterpart).
    """
    conf = gt[..., 2:3]
    if joint_weights is not None:
        conf = conf * joint_weights[:, None].to(conf)
    # joints with confidence 0 contribute 0 even when their stored coordinates are NaN
    diff = torch.where(conf > 0, pred - gt[..., :2], torch.zeros((), dtype=pred.dtype, device=pred.device))
    return (conf * diff**2).mean()


def keypoint_3d_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor | None = None,
    joint_weights: torch.Tensor | None = None,
    centre: tuple[int, int] = HIPS,
) -> torch.Tensor:
    """3D joints, both centred on the mid-point of joints ``centre`` (mid-hip), squared
    error weighted by the ground truth's confidence, rows ``valid`` only.

    pred (N, J, 3); gt (N, J, 4) (x, y, z, conf); valid (N,) (e.g. ``has_pose_3d``).
    0 (in the graph) when no row is valid.
    """
    sel = _mask(valid, pred.shape[0], pred.device)
    if not bool(sel.any()):
        return _zero(pred)
    p, g = pred[sel], gt[sel]
    conf = g[..., 3:4]
    if joint_weights is not None:
        conf = conf * joint_weights[:, None].to(conf)
    g = g[..., :3]
    i, j = centre
    p = p - (p[:, i] + p[:, j])[:, None] / 2
    g = g - (g[:, i] + g[:, j])[:, None] / 2
    diff = torch.where(conf > 0, p - g, torch.zeros((), dtype=p.dtype, device=p.device))
    return (conf * diff**2).mean()


def vertex_loss(
    pred_vertices: torch.Tensor,
    gt_vertices: torch.Tensor,
    pred_pelvis: torch.Tensor,
    gt_pelvis: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """L1 over all vertices (N, V, 3), each mesh centred on its pelvis (N, 3); rows ``valid``."""
    sel = _mask(valid, pred_vertices.shape[0], pred_vertices.device)
    if not bool(sel.any()):
        return _zero(pred_vertices)
    p = pred_vertices[sel] - pred_pelvis[sel][:, None]
    g = gt_vertices[sel] - gt_pelvis[sel][:, None]
    return F.l1_loss(p, g)


def pose_loss(pred_rotmats: torch.Tensor, gt_rotmats: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error of the rotation matrices (N, 24, 3, 3) (mean over elements), rows ``valid``."""
    sel = _mask(valid, pred_rotmats.shape[0], pred_rotmats.device)
    if not bool(sel.any()):
        return _zero(pred_rotmats)
    return F.mse_loss(pred_rotmats[sel], gt_rotmats[sel])


def betas_loss(pred_betas: torch.Tensor, gt_betas: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error of the shape coefficients (N, 10), rows ``valid``."""
    sel = _mask(valid, pred_betas.shape[0], pred_betas.device)
    if not bool(sel.any()):
        return _zero(pred_betas)
    n = min(pred_betas.shape[-1], gt_betas.shape[-1])
    return F.mse_loss(pred_betas[sel][..., :n], gt_betas[sel][..., :n])


def camera_consistency_loss(
    cams: torch.Tensor,
    rois: torch.Tensor,
    img_wh: torch.Tensor,
    form: str = "code",
    weights: tuple[float, float, float] | None = None,
) -> torch.Tensor:
    """Consistency of the M local cameras (B, M, 3) of each person (boxes (B, M, 3),
    image sizes (B, 2)); mean over persons. See
    :func:`hmrcli.geometry.cameras.consistency_loss` for the two forms."""
    if cams.shape[1] < 2:
        return _zero(cams)
    return consistency_loss(cams, rois, img_wh, form=form, weights=weights, reduction="mean")


def supcon_loss(
    features: torch.Tensor,
    temperature: float = 0.5,
    labels: torch.Tensor | None = None,
    scale_by_temperature: bool = True,
) -> torch.Tensor:
    """Supervised contrastive loss over the RoIs of a batch.

    Args:
        features: (B, M, D) projection-head outputs (L2-normalised here).
        temperature: tau (0.5 in the papers).
        labels: optional (B,) person identities (persons with equal labels are the same
            person: their RoIs are positives to each other); default: every row its own.
        scale_by_temperature: multiply by tau (the authors' code).
    Returns:
        ``mean over anchors a with positives of -1/|P(a)| sum_{p in P(a)}
        log(exp(z_a.z_p/tau) / sum_{l != a} exp(z_a.z_l/tau))`` (x tau); 0 (in the
        graph) when no anchor has a positive.
    """
    b, m, d = features.shape
    z = F.normalize(features.reshape(b * m, d).float(), dim=1)
    if labels is None:
        labels = torch.arange(b, device=features.device)
    lab = labels.to(features.device).repeat_interleave(m)
    eye = torch.eye(b * m, dtype=torch.bool, device=features.device)
    pos = (lab[:, None] == lab[None, :]) & ~eye
    npos = pos.sum(1)
    has = npos > 0
    if not bool(has.any()):
        return _zero(features)
    logits = (z @ z.T) / temperature
    log_den = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_den
    per_anchor = (log_prob * pos).sum(1)[has] / npos[has]
    loss = -per_anchor.mean()
    return loss * temperature if scale_by_temperature else loss


# ------------------------------------------------------------------ the criterion


@dataclass
class Targets:
    """Per-person ground truth of a batch (B persons; everything on one device).

    rois: (B, M, 3) the RoI boxes ``(cx, cy, b)`` in (augmented) full-image pixels;
    img_wh: (B, 2); focal: (B,) pixels or None (``sqrt(W^2 + H^2)``);
    affines: (B, M, 2, 3) image -> crop pixel affines or None (unrotated crops of ``rois``);
    keypoints_2d: (B, J, 3) full-image pixels + confidence (SPIN order); or
    keypoints_2d_crop: (B, M, J, 3) already in the loss' normalised crop coordinates;
    joints_3d: (B, J, 4) metres + confidence, with has_joints_3d (B,);
    pose: (B, 24, 3, 3) rotation matrices or (B, 72) axis-angle, betas (B, 10), with
    has_smpl (B,); vertices: optional (B, V, 3) ground-truth meshes (else posed from
    pose/betas with the training body model); person_ids: optional (B,) identities for
    the contrastive loss; cam_t: optional (B, 3) body translation (metres, camera frame:
    ``X_cam = body(pose, betas) + cam_t``) with has_cam_t (B,) (PointHMR's heatmap targets).
    """

    rois: torch.Tensor
    img_wh: torch.Tensor
    focal: torch.Tensor | None = None
    affines: torch.Tensor | None = None
    keypoints_2d: torch.Tensor | None = None
    keypoints_2d_crop: torch.Tensor | None = None
    joints_3d: torch.Tensor | None = None
    has_joints_3d: torch.Tensor | None = None
    pose: torch.Tensor | None = None
    betas: torch.Tensor | None = None
    has_smpl: torch.Tensor | None = None
    vertices: torch.Tensor | None = None
    person_ids: torch.Tensor | None = None
    cam_t: torch.Tensor | None = None
    has_cam_t: torch.Tensor | None = None


def targets_from_batch(batch: dict[str, Any], device: torch.device | str | None = None) -> Targets:
    """:class:`Targets` from a :func:`hmrcli.train.data.collate` batch (keys documented in
    :mod:`hmrcli.train.data`), moved to ``device``."""

    def g(key: str) -> torch.Tensor | None:
        v = batch.get(key)
        return None if v is None else v.to(device, non_blocking=True)

    return Targets(
        rois=g("rois"), img_wh=g("img_wh"), focal=g("focal"), affines=g("affines"),
        keypoints_2d=g("kp2d_full"), joints_3d=g("joints3d"), has_joints_3d=g("has_3d"),
        pose=g("rotmats") if "rotmats" in batch else g("pose"), betas=g("betas"), has_smpl=g("has_smpl"),
        person_ids=g("person_id"), cam_t=g("cam_t"), has_cam_t=g("has_cam_t"),
    )


@dataclass
class LossResult:
    """``total`` (scalar, in the graph) and the unweighted terms (detached scalars;
    only those that were computed)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]

    def as_floats(self) -> dict[str, float]:
        out = {"loss": float(self.total.detach())}
        out.update({k: float(v) for k, v in self.terms.items()})
        return out


def _rep(x: torch.Tensor, m: int) -> torch.Tensor:
    """(B, ...) -> (B*M, ...), each person repeated for its M RoIs."""
    return x.repeat_interleave(m, dim=0)


class MultiRoILoss:
    """The training criterion: ``loss(out, targets) -> LossResult``.

    Args:
        body: the body model whose pose/shape the network predicts (differentiable).
        cfg: :class:`hmrcli.train.config.LossConfig` (weights, forms, options).
        crop_hw: the network's crop size (H, W).
        aggregation: the model's aggregation; with ``cfg.mesh_source == "auto"`` the
            mesh terms use every RoI's own estimate for ``"code"`` and the person's
            single estimate for ``"paper"``.
    """

    def __init__(self, body: "BodyModel", cfg: "LossConfig", crop_hw: tuple[int, int], aggregation: str = "code"):
        self.body = body
        self.cfg = cfg
        self.crop_hw = (int(crop_hw[0]), int(crop_hw[1]))
        src = cfg.mesh_source
        if src == "auto":
            src = "person" if aggregation == "paper" else "roi"
        if src not in ("roi", "person"):
            raise ValueError(f"losses.mesh_source must be auto, roi or person; got {cfg.mesh_source!r}")
        self.mesh_source = src

    @property
    def needs_proj(self) -> bool:
        """Whether the projection head must run (the contrastive term is on)."""
        return self.cfg.contrast > 0

    def run_model(self, model: Any, crops: torch.Tensor, bbox_info: torch.Tensor) -> Any:
        """The training forward pass whose result this criterion takes (architectures with
        losses of their own override it: :mod:`hmrcli.train.losses_imphmr`)."""
        return model(crops, bbox_info, return_proj=self.needs_proj)

    def __call__(self, out: "RegressorOutput", t: Targets) -> LossResult:
        cfg = self.cfg
        with torch.autocast(device_type=out.cams.device.type, enabled=False):
            return self._compute(out, t, cfg)

    def _compute(self, out: "RegressorOutput", t: Targets, cfg: Any) -> LossResult:
        cams = out.cams.float()
        b, m = cams.shape[:2]
        n = b * m
        dev = cams.device
        if self.mesh_source == "person":
            rot = out.person_rotmats.float()[:, None].expand(b, m, 24, 3, 3)
            betas = out.person_betas.float()[:, None].expand(b, m, -1)
        else:
            rot, betas = out.rotmats.float(), out.betas.float()
        rot = rot.reshape(n, 24, 3, 3)
        betas = betas.reshape(n, -1)
        rois = t.rois.float()
        img_wh = t.img_wh.float()
        focal = None if t.focal is None else t.focal.float()
        terms: dict[str, torch.Tensor] = {}
        weights = {"kp2d": cfg.kp2d, "kp3d": cfg.kp3d, "vertices": cfg.vertices, "pose": cfg.pose,
                   "betas": cfg.betas, "camera": cfg.camera, "contrast": cfg.contrast}
        jw = torch.tensor(SPIN24_BODY_CONF.tolist(), dtype=torch.float32, device=dev)
        has_smpl = None if t.has_smpl is None else _rep(t.has_smpl, m)

        pred = None
        if weights["kp2d"] > 0 or weights["kp3d"] > 0 or weights["vertices"] > 0:
            pred = self.body(rot, betas)
            j24 = spin24_from_body(pred.joints, pred.keypoints_coco)  # (N, 24, 3)

        if weights["kp2d"] > 0:
            px = full_camera_keypoints(j24.reshape(b, m, 24, 3), cams, rois, img_wh, focal)
            p2d = image_to_crop_coords(px, rois, self.crop_hw, t.affines, cfg.kp2d_norm)
            if t.keypoints_2d_crop is not None:
                g2d = t.keypoints_2d_crop.float()
            elif t.keypoints_2d is not None:
                g = t.keypoints_2d.float()
                gxy = image_to_crop_coords(g[:, None, :, :2].expand(b, m, -1, 2), rois, self.crop_hw, t.affines,
                                           cfg.kp2d_norm)
                g2d = torch.cat([gxy, g[:, None, :, 2:3].expand(b, m, -1, 1)], dim=-1)
            else:
                raise ValueError("losses.kp2d > 0 needs 2D keypoints in the batch")
            terms["kp2d"] = keypoint_2d_loss(p2d, g2d, jw)

        if weights["kp3d"] > 0:
            if t.joints_3d is None:
                terms["kp3d"] = _zero(j24)
            else:
                valid = None if t.has_joints_3d is None else _rep(t.has_joints_3d, m)
                terms["kp3d"] = keypoint_3d_loss(j24, _rep(t.joints_3d.float(), m), valid, jw)

        gt_rot = None
        if t.pose is not None and (weights["pose"] > 0 or (weights["vertices"] > 0 and t.vertices is None)):
            gt_rot = t.pose.float()
            if gt_rot.shape[-2:] != (3, 3):
                gt_rot = axis_angle_to_rotmat(gt_rot.reshape(b, 24, 3))

        if weights["vertices"] > 0:
            if t.vertices is not None:
                gt_v = t.vertices.float()
                reg = torch.as_tensor(self.body.joint_regressor[0], dtype=gt_v.dtype, device=dev)
                gt_pelvis = torch.einsum("v,bvc->bc", reg, gt_v)  # the pelvis joint of the GT mesh
            elif gt_rot is not None and t.betas is not None:
                with torch.no_grad():
                    g_out = self.body(gt_rot, t.betas.float())
                gt_v, gt_pelvis = g_out.vertices, g_out.joints[:, 0]
            else:
                gt_v = None
            if gt_v is None:
                terms["vertices"] = _zero(pred.vertices)
            else:
                terms["vertices"] = vertex_loss(pred.vertices, _rep(gt_v, m), pred.joints[:, 0], _rep(gt_pelvis, m),
                                                has_smpl)

        if weights["pose"] > 0:
            terms["pose"] = _zero(rot) if gt_rot is None else pose_loss(rot, _rep(gt_rot, m), has_smpl)
        if weights["betas"] > 0:
            terms["betas"] = _zero(betas) if t.betas is None else betas_loss(betas, _rep(t.betas.float(), m), has_smpl)
        if weights["camera"] > 0:
            w = tuple(cfg.camera_axis_weights) if cfg.camera_axis_weights else None
            terms["camera"] = camera_consistency_loss(cams, rois, img_wh, cfg.camera_form, w)
        if weights["contrast"] > 0:
            if out.proj is None:
                raise ValueError("losses.contrast > 0 needs the projection head output (forward(..., return_proj=True))")
            terms["contrast"] = supcon_loss(out.proj, cfg.temperature, t.person_ids, cfg.contrast_scale_by_temperature)

        total = sum(weights[k] * v for k, v in terms.items()) * cfg.scale
        if not isinstance(total, torch.Tensor):  # every weight 0
            total = _zero(cams)
        return LossResult(total=total, terms={k: v.detach() for k, v in terms.items()})
