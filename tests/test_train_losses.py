"""Training losses (hmrcli.train.losses): every term is 0 at its optimum and rises, with a
gradient pointing back, away from it; camera consistency is 0 exactly for local cameras of
one full camera; the contrastive loss falls when the RoIs of one person are pulled together;
weight 0 switches a term off (not computed). CPU, tiny tensors, the free body model."""

from __future__ import annotations

import pytest
import torch

from hmrcli.body import load_body_model
from hmrcli.geometry.cameras import full_to_local, intrinsics, project
from hmrcli.geometry.crops import crop_affine
from hmrcli.geometry.rois import make_rois
from hmrcli.geometry.rotations import axis_angle_to_rotmat
from hmrcli.nn.multiroi import RegressorOutput
from hmrcli.train.config import LossConfig
from hmrcli.train.data import SPIN24_BODY_CONF, spin24_from_body
from hmrcli.train.losses import (
    LOSS_TERMS,
    MultiRoILoss,
    Targets,
    betas_loss,
    camera_consistency_loss,
    full_camera_keypoints,
    image_to_crop_coords,
    keypoint_2d_loss,
    keypoint_3d_loss,
    pose_loss,
    supcon_loss,
    vertex_loss,
)

CROP = (256, 192)
torch.set_default_dtype(torch.float32)


@pytest.fixture(scope="module")
def body():
    return load_body_model("free")


def _scene(body, b=3, m=5, seed=0, dtype=torch.float64):
    """Ground truth of ``b`` people seen by one full camera each, their M RoIs and the local
    cameras of that full camera (so every term can be evaluated at its optimum)."""
    g = torch.Generator().manual_seed(seed)
    aa = torch.randn(b, 24, 3, generator=g, dtype=dtype) * 0.25
    aa[:, 0] = torch.tensor([torch.pi, 0.0, 0.0], dtype=dtype)  # upright in the camera frame (y down)
    rot = axis_angle_to_rotmat(aa)
    betas = torch.randn(b, 10, generator=g, dtype=dtype)
    img_wh = torch.tensor([[640.0, 480.0], [800.0, 600.0], [500.0, 500.0]], dtype=dtype)[:b]
    t_full = torch.tensor([[0.2, 0.1, 5.0], [-0.4, 0.3, 8.0], [0.1, -0.2, 4.0]], dtype=dtype)[:b]
    focal = (img_wh**2).sum(-1).sqrt()
    out = body(rot, betas)
    j24 = spin24_from_body(out.joints, out.keypoints_coco)
    kp = project(j24, intrinsics(focal, img_wh[:, 0], img_wh[:, 1]), t=t_full)
    conf = torch.as_tensor(SPIN24_BODY_CONF.copy(), dtype=dtype).expand(b, 24)
    centre = (kp * conf[..., None]).sum(1) / conf.sum(1, keepdim=True)
    box = torch.cat([centre, torch.full((b, 1), 220.0, dtype=dtype)], -1)
    rois = make_rois(box, m)
    cams = full_to_local(t_full[:, None], rois, img_wh[:, None])
    return {
        "rot": rot, "betas": betas, "img_wh": img_wh, "focal": focal, "t_full": t_full, "rois": rois, "cams": cams,
        "kp2d": torch.cat([kp, conf[..., None]], -1), "S": torch.cat([j24, conf[..., None]], -1),
        "verts": out.vertices, "pelvis": out.joints[:, 0], "j24": j24,
    }


def _output(sc, cams=None, rot=None, betas=None, proj=None):
    b, m = sc["rois"].shape[:2]
    rot = sc["rot"] if rot is None else rot
    betas = sc["betas"] if betas is None else betas
    cams = sc["cams"] if cams is None else cams
    return RegressorOutput(rotmats=rot[:, None].expand(b, m, 24, 3, 3), betas=betas[:, None].expand(b, m, 10),
                           cams=cams, pose6d=torch.zeros(b, m, 144), person_rotmats=rot, person_betas=betas,
                           person_cam=cams[:, 0], proj=proj)


def _targets(sc, **kw):
    b = sc["rot"].shape[0]
    args = dict(rois=sc["rois"], img_wh=sc["img_wh"], focal=sc["focal"], keypoints_2d=sc["kp2d"],
                joints_3d=sc["S"], has_joints_3d=torch.ones(b), pose=sc["rot"], betas=sc["betas"],
                has_smpl=torch.ones(b))
    args.update(kw)
    return Targets(**args)


def _min_and_slope(fn, x0: torch.Tensor, direction: torch.Tensor, delta: float = 1e-2, tol: float = 1e-10):
    """``fn(x0)`` is (numerically) 0, ``fn`` grows along ``direction`` and its gradient at
    ``x0 + delta * direction`` points away from ``x0`` (so a descent step goes back)."""
    at_opt = float(fn(x0))
    assert abs(at_opt) <= tol, at_opt
    x = (x0 + delta * direction).detach().requires_grad_(True)
    val = fn(x)
    val.backward()
    assert float(val.detach()) > at_opt
    assert float((x.grad * direction).sum()) > 0
    # and a small gradient step (first-order decrease: 1 % of the value) reduces it
    g2 = float((x.grad**2).sum())
    x2 = (x - 0.01 * float(val.detach()) / g2 * x.grad).detach()
    assert float(fn(x2)) < float(val.detach())


# ------------------------------------------------------------------ each term alone


def test_keypoint_2d_loss_through_each_rois_full_camera(body):
    sc = _scene(body)
    gt = sc["kp2d"]
    b, m = sc["rois"].shape[:2]

    def loss_of_cams(cams):
        px = full_camera_keypoints(sc["j24"], cams, sc["rois"], sc["img_wh"], sc["focal"])
        pred = image_to_crop_coords(px, sc["rois"], CROP)
        g = image_to_crop_coords(gt[:, None, :, :2].expand(b, m, 24, 2), sc["rois"], CROP)
        return keypoint_2d_loss(pred, torch.cat([g, gt[:, None, :, 2:].expand(b, m, 24, 1)], -1))

    for k in range(3):  # scale, tx, ty of one RoI
        d = torch.zeros_like(sc["cams"])
        d[1, 3, k] = 1.0
        _min_and_slope(loss_of_cams, sc["cams"], d, delta=1e-2, tol=1e-18)
    # every RoI is compared in its own crop: the RoI-0 camera moves only RoI 0's projections
    d = torch.zeros_like(sc["cams"])
    d[0, 0, 1] = 0.05
    px0 = full_camera_keypoints(sc["j24"], sc["cams"], sc["rois"], sc["img_wh"], sc["focal"])
    px1 = full_camera_keypoints(sc["j24"], sc["cams"] + d, sc["rois"], sc["img_wh"], sc["focal"])
    moved = (px1 - px0).abs().amax(dim=(-1, -2))
    assert moved[0, 0] > 1 and moved[0, 1:].max() == 0 and moved[1:].max() == 0


def test_keypoint_2d_projection_matches_the_full_camera(body):
    """The projected keypoints are the ground truth in the full image, and in each crop they
    are where the crop affine puts the full-image points (both normalisations)."""
    sc = _scene(body)
    px = full_camera_keypoints(sc["j24"], sc["cams"], sc["rois"], sc["img_wh"], sc["focal"])
    conf = sc["kp2d"][..., 2] > 0
    for mm in range(5):
        torch.testing.assert_close(px[:, mm][conf], sc["kp2d"][..., :2][conf], atol=1e-6, rtol=0)
    box = image_to_crop_coords(px, sc["rois"], CROP, norm="box")
    crop = image_to_crop_coords(px, sc["rois"], CROP, norm="crop")
    h, w = CROP
    torch.testing.assert_close(crop[..., 0], box[..., 0] * (h / 2) / (w / 2), atol=1e-9, rtol=0)
    torch.testing.assert_close(crop[..., 1], box[..., 1], atol=1e-9, rtol=0)
    # explicit affines (e.g. a rotated crop) are used when given
    aff = crop_affine(sc["rois"], CROP, rot_deg=torch.full(sc["rois"].shape[:2], 30.0, dtype=torch.float64))
    rotated = image_to_crop_coords(px, sc["rois"], CROP, affines=aff)
    assert not torch.allclose(rotated, box)
    torch.testing.assert_close(rotated.norm(dim=-1), box.norm(dim=-1), atol=1e-9, rtol=0)  # rotation about the centre


def test_keypoint_2d_loss_ignores_zero_confidence_even_nan():
    pred = torch.zeros(2, 3, 4, 2, requires_grad=True)
    gt = torch.zeros(2, 3, 4, 3)
    gt[..., 2] = 1.0
    gt[0, 0, 1] = torch.tensor([float("nan"), float("nan"), 0.0])
    loss = keypoint_2d_loss(pred, gt)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(pred.grad).all()
    # confidence weighting
    gt2 = gt.clone()
    gt2[0, 0, 1] = torch.tensor([1.0, 0.0, 0.5])
    with torch.no_grad():
        assert float(keypoint_2d_loss(pred, gt2)) == pytest.approx(0.5 * 1.0 / (2 * 3 * 4 * 2))
        jw = torch.tensor([1.0, 0.0, 1.0, 1.0])
        assert float(keypoint_2d_loss(pred, gt2, jw)) == 0.0


def test_keypoint_3d_loss(body):
    sc = _scene(body)
    gt = sc["S"]
    d = torch.randn(sc["j24"].shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _min_and_slope(lambda p: keypoint_3d_loss(p, gt), sc["j24"], d, tol=1e-20)
    # pelvis (mid-hip) centred: a global translation costs nothing
    assert float(keypoint_3d_loss(sc["j24"] + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64), gt)) < 1e-20
    # rows without 3D ground truth are ignored; none valid -> 0 in the graph
    p = (sc["j24"] + 0.1).requires_grad_(True)
    none = keypoint_3d_loss(p, gt, valid=torch.zeros(3))
    none.backward()
    assert float(none.detach()) == 0.0 and p.grad is not None
    one = keypoint_3d_loss(sc["j24"] + d * 0.1, gt, valid=torch.tensor([0, 1, 0]))
    assert float(one) == pytest.approx(float(keypoint_3d_loss((sc["j24"] + d * 0.1)[1:2], gt[1:2])))


def test_vertex_pose_betas_losses(body):
    sc = _scene(body)
    g = torch.Generator().manual_seed(4)
    v, pel = sc["verts"], sc["pelvis"]
    _min_and_slope(lambda x: vertex_loss(x, v, pel, pel), v, torch.randn(v.shape, generator=g, dtype=v.dtype), tol=0)
    # centred on the pelvis: moving the mesh with its pelvis costs nothing
    shift = torch.tensor([0.3, 0.0, -1.0], dtype=v.dtype)
    assert float(vertex_loss(v + shift, v, pel + shift, pel)) < 1e-12
    r = sc["rot"]
    _min_and_slope(lambda x: pose_loss(x, r), r, torch.randn(r.shape, generator=g, dtype=r.dtype), tol=0)
    bt = sc["betas"]
    _min_and_slope(lambda x: betas_loss(x, bt), bt, torch.randn(bt.shape, generator=g, dtype=bt.dtype), tol=0)
    # the has_smpl mask
    assert float(pose_loss(r + 1, r, valid=torch.zeros(3))) == 0.0
    assert float(betas_loss(bt + 1, bt, valid=torch.tensor([1, 0, 0]))) == pytest.approx(1.0)


@pytest.mark.parametrize("form", ["paper", "code"])
def test_camera_consistency_zero_for_one_full_camera_positive_otherwise(form):
    g = torch.Generator().manual_seed(5)
    b, m = 4, 5
    img_wh = torch.tensor([[640.0, 480.0]], dtype=torch.float64).expand(b, 2)
    box = torch.stack([torch.rand(b, generator=g, dtype=torch.float64) * 640,
                       torch.rand(b, generator=g, dtype=torch.float64) * 480,
                       80 + torch.rand(b, generator=g, dtype=torch.float64) * 300], -1)
    rois = make_rois(box, m)
    t_full = torch.stack([torch.randn(b, generator=g, dtype=torch.float64),
                          torch.randn(b, generator=g, dtype=torch.float64),
                          3 + 10 * torch.rand(b, generator=g, dtype=torch.float64)], -1)
    cams = full_to_local(t_full[:, None], rois, img_wh[:, None])
    assert float(camera_consistency_loss(cams, rois, img_wh, form)) < 1e-20
    for k in range(3):
        d = torch.zeros_like(cams)
        d[2, 3, k] = 1.0
        _min_and_slope(lambda c: camera_consistency_loss(c, rois, img_wh, form), cams, d, delta=1e-2, tol=1e-20)
    # random local cameras are inconsistent
    assert float(camera_consistency_loss(cams + 0.05 * torch.randn(cams.shape, generator=g, dtype=cams.dtype),
                                         rois, img_wh, form)) > 1e-6
    # one RoI: nothing to compare
    assert float(camera_consistency_loss(cams[:, :1] + 1, rois[:, :1], img_wh, form)) == 0.0


def test_contrastive_loss_falls_when_same_person_rois_are_pulled_together():
    g = torch.Generator().manual_seed(6)
    b, m, d = 4, 5, 16
    centres = torch.randn(b, 1, d, generator=g)
    feats = centres + 1.5 * torch.randn(b, m, d, generator=g)
    losses = []
    for a in (0.0, 0.3, 0.6, 0.9, 1.0):
        pulled = feats + a * (feats.mean(1, keepdim=True) - feats)  # each RoI towards its person's mean
        losses.append(float(supcon_loss(pulled, 0.5)))
    assert all(x > y for x, y in zip(losses, losses[1:])), losses
    # a gradient step on the features lowers it
    x = feats.clone().requires_grad_(True)
    val = supcon_loss(x, 0.5)
    val.backward()
    assert float(supcon_loss((x - 0.5 * x.grad).detach(), 0.5)) < float(val.detach())
    # pushing another person's RoI onto this person's raises it
    pushed = feats.clone()
    pushed[1, 0] = feats[0].mean(0)
    assert float(supcon_loss(pushed, 0.5)) > float(supcon_loss(feats, 0.5))


def test_contrastive_loss_definition():
    """Against a direct evaluation of the SupCon formula (x tau, the authors' scaling)."""
    g = torch.Generator().manual_seed(7)
    b, m, d, tau = 3, 2, 5, 0.5
    f = torch.randn(b, m, d, generator=g, dtype=torch.float64)
    z = torch.nn.functional.normalize(f.reshape(b * m, d), dim=1)
    lab = torch.arange(b).repeat_interleave(m)
    total = 0.0
    for a in range(b * m):
        den = sum(torch.exp(z[a] @ z[k] / tau) for k in range(b * m) if k != a)
        pos = [k for k in range(b * m) if k != a and lab[k] == lab[a]]
        total += -sum(torch.log(torch.exp(z[a] @ z[p] / tau) / den) for p in pos) / len(pos)
    want = float(total) / (b * m) * tau
    assert float(supcon_loss(f, tau)) == pytest.approx(want, rel=1e-6)
    assert float(supcon_loss(f, tau, scale_by_temperature=False)) == pytest.approx(want / tau, rel=1e-6)
    # M = 1: no positives, nothing to learn
    assert float(supcon_loss(f[:, :1], tau)) == 0.0
    # person labels: rows 0 and 1 are the same person -> their RoIs are positives too
    assert float(supcon_loss(f, tau, labels=torch.tensor([0, 0, 1]))) != pytest.approx(want, rel=1e-6)


# ------------------------------------------------------------------ the criterion


@pytest.mark.parametrize("form,norm", [("code", "box"), ("paper", "crop")])
def test_criterion_all_terms_zero_at_ground_truth(body, form, norm):
    sc = _scene(body, dtype=torch.float32)
    crit = MultiRoILoss(body, LossConfig(camera_form=form, kp2d_norm=norm), CROP)
    res = crit(_output(sc, proj=torch.randn(3, 5, 8)), _targets(sc))
    assert set(res.terms) == set(LOSS_TERMS)
    for k in ("kp2d", "kp3d", "pose", "betas", "camera"):
        assert float(res.terms[k]) < 1e-9, (k, float(res.terms[k]))
    assert float(res.terms["vertices"]) < 1e-6  # float32 skinning round-off (L1)
    # the total is scale * sum(weight * term)
    c = LossConfig()
    want = c.scale * sum(getattr(c, k) * float(v) for k, v in res.terms.items())
    assert float(res.total) == pytest.approx(want, rel=1e-5)


def test_criterion_gradients_point_back_to_ground_truth(body):
    sc = _scene(body, dtype=torch.float32)
    crit = MultiRoILoss(body, LossConfig(contrast=0.0), CROP)
    cams = (sc["cams"] + torch.tensor([0.05, 0.02, -0.03])).requires_grad_(True)
    betas = (sc["betas"] + 0.3).requires_grad_(True)
    res = crit(_output(sc, cams=cams, betas=betas), _targets(sc))
    res.total.backward()
    assert float(res.terms["kp2d"]) > 0 and float(res.terms["betas"]) > 0
    with torch.no_grad():
        res2 = crit(_output(sc, cams=cams - 1e-4 * cams.grad / cams.grad.norm(),
                            betas=betas - 1e-3 * betas.grad / betas.grad.norm()), _targets(sc))
    assert float(res2.total) < float(res.total.detach())


class _NoBody:
    def __call__(self, *a, **k):  # pragma: no cover - must not be called
        raise AssertionError("the body model must not run when no term needs it")


def test_weight_zero_terms_are_not_computed(body):
    sc = _scene(body, dtype=torch.float32)
    cfg = LossConfig(kp2d=0, kp3d=0, vertices=0, contrast=0)
    crit = MultiRoILoss(_NoBody(), cfg, CROP)
    assert not crit.needs_proj
    res = crit(_output(sc, cams=sc["cams"] + 0.1, proj=None), _targets(sc, keypoints_2d=None))
    assert set(res.terms) == {"pose", "betas", "camera"}
    assert float(res.total) == pytest.approx(cfg.scale * cfg.camera * float(res.terms["camera"]), rel=1e-6)
    # contrast on without the projection head output: a clear error
    with pytest.raises(ValueError, match="projection head"):
        MultiRoILoss(body, LossConfig(), CROP)(_output(sc), _targets(sc))
    # everything off: 0, still differentiable
    off = LossConfig(kp2d=0, kp3d=0, vertices=0, pose=0, betas=0, camera=0, contrast=0)
    cams = sc["cams"].clone().requires_grad_(True)
    res = MultiRoILoss(_NoBody(), off, CROP)(_output(sc, cams=cams), _targets(sc))
    res.total.backward()
    assert float(res.total.detach()) == 0.0 and res.terms == {}


def test_mesh_source_person_uses_the_shared_estimate(body):
    sc = _scene(body, dtype=torch.float32)
    b, m = sc["rois"].shape[:2]
    out = _output(sc)
    # corrupt the per-RoI estimates, keep the person's: "person" mode does not see them
    out.rotmats = torch.eye(3).expand(b, m, 24, 3, 3)
    cfg = LossConfig(contrast=0.0, mesh_source="person")
    res = MultiRoILoss(body, cfg, CROP)(out, _targets(sc))
    assert float(res.terms["pose"]) < 1e-12 and float(res.terms["kp3d"]) < 1e-9
    res = MultiRoILoss(body, LossConfig(contrast=0.0), CROP, aggregation="code")(out, _targets(sc))
    assert float(res.terms["pose"]) > 0.01
    assert MultiRoILoss(body, LossConfig(), CROP, aggregation="paper").mesh_source == "person"
