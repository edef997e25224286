"""ImpHMR's and PointHMR's training losses (hmrcli.train.losses_imphmr / losses_pointhmr) and
their training runs: every term is ~0 at its optimum and rises away from it with a gradient
pointing back; the ground truth is rotated consistently with the viewing direction; a few
``hmrcli train`` steps lower the loss and the final checkpoint loads for inference (ImpHMR
also for another azimuth). CPU, the free body model, tiny widths and crops."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from hmrcli.body import load_body_model
from hmrcli.geometry.cameras import full_to_local, intrinsics, project
from hmrcli.geometry.rois import make_rois
from hmrcli.geometry.rotations import axis_angle_to_rotmat
from hmrcli.nn.imphmr import azimuth_rotation
from hmrcli.nn.mesh_sampling import load_mesh_sampling
from hmrcli.nn.multiroi import RegressorOutput
from hmrcli.train.config import LossConfig, load_config
from hmrcli.train.data import SPIN24_BODY_CONF, spin24_from_body
from hmrcli.train.loop import train
from hmrcli.train.losses import LOSS_TERMS, Targets
from hmrcli.train.losses_imphmr import (
    IMPHMR_TERMS,
    ImpHMRLoss,
    ImpHMRStep,
    rotate_ground_truth,
    silhouettes,
)
from hmrcli.train.losses_pointhmr import (
    POINTHMR_TERMS,
    PointHMRLoss,
    gaussian_heatmaps,
    heatmap_coordinates,
)

CROP = (64, 48)
SIL = 32


@pytest.fixture(scope="module")
def body():
    return load_body_model("free")


@pytest.fixture(scope="module")
def sampling():
    return load_mesh_sampling("free")


def _scene(body, b=2, seed=0):
    """People seen by one full camera each, one RoI, and the local camera of that full camera."""
    g = torch.Generator().manual_seed(seed)
    aa = torch.randn(b, 24, 3, generator=g) * 0.25
    aa[:, 0] = torch.tensor([math.pi, 0.0, 0.0])
    rot = axis_angle_to_rotmat(aa)
    betas = torch.randn(b, 10, generator=g)
    img_wh = torch.tensor([[640.0, 480.0], [500.0, 500.0]])[:b]
    t_full = torch.tensor([[0.2, 0.1, 5.0], [-0.3, 0.2, 6.0]])[:b]
    focal = (img_wh**2).sum(-1).sqrt()
    out = body(rot, betas)
    j24 = spin24_from_body(out.joints, out.keypoints_coco)
    kp = project(j24, intrinsics(focal, img_wh[:, 0], img_wh[:, 1]), t=t_full)
    conf = torch.as_tensor(SPIN24_BODY_CONF.copy()).expand(b, 24)
    centre = (kp * conf[..., None]).sum(1) / conf.sum(1, keepdim=True)
    rois = make_rois(torch.cat([centre, torch.full((b, 1), 220.0)], -1), 1)
    cams = full_to_local(t_full[:, None], rois, img_wh[:, None]).float()
    targets = Targets(rois=rois, img_wh=img_wh, focal=focal, keypoints_2d=torch.cat([kp, conf[..., None]], -1),
                      joints_3d=torch.cat([j24, conf[..., None]], -1), has_joints_3d=torch.ones(b), pose=rot,
                      betas=betas, has_smpl=torch.ones(b), cam_t=t_full, has_cam_t=torch.ones(b))
    return {"rot": rot, "betas": betas, "cams": cams, "out": out, "j24": j24, "targets": targets}


def _output(rot, betas, cams, extras=None):
    b = rot.shape[0]
    return RegressorOutput(rotmats=rot[:, None], betas=betas[:, None], cams=cams, pose6d=torch.zeros(b, 1, 144),
                           person_rotmats=rot, person_betas=betas, person_cam=cams[:, 0], extras=extras)


# ------------------------------------------------------------------ ImpHMR


def test_rotated_ground_truth_is_the_mesh_seen_from_the_azimuth(body):
    sc = _scene(body)
    xi = torch.tensor([0.7, -2.0])
    rot_v, j_v = rotate_ground_truth(sc["rot"], xi, torch.cat([sc["j24"], torch.ones(2, 24, 1)], -1))
    o = body(rot_v, sc["betas"])
    r_t = azimuth_rotation(xi).transpose(-1, -2)
    want = torch.einsum("bij,bkj->bki", r_t, sc["out"].joints - sc["out"].joints[:, :1])
    assert torch.allclose(o.joints - o.joints[:, :1], want, atol=1e-5)  # pose and shape unchanged, turned
    assert torch.allclose(j_v[..., :3], torch.einsum("bij,bkj->bki", r_t, sc["j24"]), atol=1e-6)
    assert torch.equal(rot_v[:, 1:], sc["rot"][:, 1:])


def test_silhouette_target_covers_the_body(body):
    sc = _scene(body, b=1)
    v = sc["out"].vertices - sc["out"].joints[:, :1]
    s0 = silhouettes(v, torch.as_tensor(body.faces), 64, 2.4)[0]
    rows = torch.nonzero(s0.any(1)).squeeze(1)
    height_px = float(rows.max() - rows.min() + 1)
    height_m = float(v[0, :, 1].max() - v[0, :, 1].min())
    assert abs(height_px * 2.4 / 64 - height_m) < 2 * 2.4 / 64  # metres per pixel = extent / size
    r90, _ = rotate_ground_truth(sc["rot"], torch.tensor([math.pi / 2]))
    o = body(r90, sc["betas"])
    s90 = silhouettes(o.vertices - o.joints[:, :1], torch.as_tensor(body.faces), 64, 2.4)[0]
    assert float((s0 != s90).float().mean()) > 0.01 and 0.02 < float(s0.mean()) < 0.5


def _imphmr_at_optimum(body, sc, xi, has_smpl=True):
    rot_v, _ = rotate_ground_truth(sc["rot"], xi)
    o = body(rot_v, sc["betas"])
    sil = silhouettes(o.vertices - o.joints[:, :1], torch.as_tensor(body.faces), SIL, 2.4)
    logits = (sil * 2 - 1)[:, None] * 40.0
    canon = _output(sc["rot"], sc["betas"], sc["cams"])
    view = _output(rot_v, sc["betas"], sc["cams"], {"silhouette": logits, "azimuth": xi})
    return canon, view, rot_v


def test_imphmr_terms_zero_at_optimum_and_gradients_point_back(body):
    sc = _scene(body)
    xi = torch.tensor([0.9, -2.4])
    crit = ImpHMRLoss(body, LossConfig(contrast=0, camera=0, consistency=0), CROP)
    canon, view, rot_v = _imphmr_at_optimum(body, sc, xi)
    res = crit(ImpHMRStep(canon, view, xi), sc["targets"])
    assert set(IMPHMR_TERMS) - {"consistency"} <= set(res.terms)
    for k in ("view_kp3d", "view_pose", "view_betas", "silhouette", "kp2d", "kp3d", "pose", "betas"):
        assert float(res.terms[k]) < 1e-6, (k, float(res.terms[k]))
    # away from the optimum: the view's betas and global orientation, the silhouette logits
    betas = (sc["betas"] + 0.2).requires_grad_(True)
    ang = torch.zeros(2, requires_grad=True)

    def turned(a):
        r = rot_v.clone()
        r[:, 0] = azimuth_rotation(a) @ rot_v[:, 0]
        return r

    logits = view.extras["silhouette"].clone()
    logits[:, :, SIL // 2] = -logits[:, :, SIL // 2].sign()  # one row on the wrong side (not saturated)
    logits.requires_grad_(True)
    delta = torch.tensor([0.3, -0.3])
    bad = _output(turned(ang + delta), betas, sc["cams"], {"silhouette": logits, "azimuth": xi})
    res2 = crit(ImpHMRStep(canon, bad, xi), sc["targets"])
    for k in ("view_kp3d", "view_pose", "view_betas", "silhouette"):
        assert float(res2.terms[k]) > 1e-4, k
    res2.total.backward()
    assert float((betas.grad * 0.2).sum()) > 0  # descent moves the betas back
    wrong = torch.zeros_like(logits, dtype=torch.bool)
    wrong[:, :, SIL // 2] = True
    flipped = wrong & (view.extras["silhouette"].abs() > 0)
    # the gradient pushes every flipped logit back towards its target's sign
    assert bool((logits.grad[flipped] * view.extras["silhouette"][flipped] < 0).all())


def test_imphmr_consistency_term(body):
    sc = _scene(body)
    xi = torch.tensor([1.1, 2.5])
    crit = ImpHMRLoss(body, LossConfig(contrast=0, camera=0, kp2d=0, kp3d=0, vertices=0, pose=0, betas=0,
                                       silhouette=0), CROP)
    t = sc["targets"]
    t.has_smpl = torch.zeros(2)  # 2D-only rows: the consistency constraint applies
    canon, view, rot_v = _imphmr_at_optimum(body, sc, xi)
    res = crit(ImpHMRStep(canon, view, xi), t)
    assert float(res.terms["consistency"]) < 1e-10
    betas = (sc["betas"] - 0.1).requires_grad_(True)
    res2 = crit(ImpHMRStep(canon, _output(rot_v, betas, sc["cams"]), xi), t)
    res2.total.backward()
    assert float(res2.terms["consistency"]) > 0 and float((betas.grad * -0.1).sum()) > 0
    # a view whose estimate equals the canonical one (not turned) is inconsistent
    res3 = crit(ImpHMRStep(canon, _output(sc["rot"], sc["betas"], sc["cams"]), xi), t)
    assert float(res3.terms["consistency"]) > 1e-3


# ------------------------------------------------------------------ PointHMR


def _pointhmr_at_optimum(body, sc, sampling, map_hw=(16, 12)):
    o = sc["out"]
    gv = o.vertices - o.joints[:, :1]
    down0, down1 = torch.from_numpy(sampling.down0), torch.from_numpy(sampling.down1)
    t = sc["targets"]
    k = intrinsics(t.focal, t.img_wh[:, 0], t.img_wh[:, 1])
    from hmrcli.geometry.crops import crop_affine, map_points

    px = map_points(project(o.vertices[:, down0], k, t=t.cam_t), crop_affine(t.rois[:, 0], CROP))
    heat = gaussian_heatmaps(heatmap_coordinates(px, CROP, map_hw), map_hw, max(0.75, 2.0 * map_hw[1] / 56))
    extras = {"heatmaps": heat, "vertices0": gv[:, down0], "vertices1": gv[:, down1], "vertices": gv,
              "joints": (sc["j24"] - o.joints[:, :1])[:, :14]}
    return extras, (down0, down1)


def test_pointhmr_terms_zero_at_optimum_and_gradients_point_back(body, sampling):
    sc = _scene(body)
    extras, down = _pointhmr_at_optimum(body, sc, sampling)
    crit = PointHMRLoss(body, LossConfig(contrast=0, camera=0), CROP, down)
    res = crit(_output(sc["rot"], sc["betas"], sc["cams"], extras), sc["targets"])
    assert set(POINTHMR_TERMS) | set(LOSS_TERMS) - {"camera", "contrast"} <= set(res.terms)
    for k in (*POINTHMR_TERMS, "kp2d", "kp3d", "pose", "betas"):
        assert float(res.terms[k]) < 1e-6, (k, float(res.terms[k]))
    # the heatmap targets peak at the projected vertices
    assert float(extras["heatmaps"].amax((-2, -1)).median()) > 0.5
    moved = {k: v.clone() for k, v in extras.items()}
    shift = torch.tensor([0.03, -0.02, 0.01])
    for k in ("vertices0", "vertices1", "vertices", "joints"):
        moved[k] = (moved[k] + shift).requires_grad_(True)
    moved["heatmaps"] = (moved["heatmaps"] + 0.1).requires_grad_(True)
    res2 = crit(_output(sc["rot"], sc["betas"], sc["cams"], moved), sc["targets"])
    for k in POINTHMR_TERMS:
        assert float(res2.terms[k]) > 1e-6, k
    res2.total.backward()
    for k in ("vertices0", "vertices1", "vertices", "joints"):
        assert float((moved[k].grad * shift).sum()) > 0, k  # descent moves them back
    assert float(moved["heatmaps"].grad.sum()) > 0


# ------------------------------------------------------------------ training runs


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from hmrcli.train.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth18")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        s = write_synthetic_dataset(root, 8, seed=3, config=SyntheticConfig(image_wh=(256, 192), min_height=32))
    return s["npz"]


@pytest.mark.parametrize("arch,head", [("imphmr", 16), ("pointhmr", 32)])
def test_a_few_training_steps_lower_the_loss_and_the_checkpoint_infers(synth, tmp_path, arch, head):
    out = tmp_path / arch
    cfg = load_config(None, [f"data.train.0.path={synth}", f"output={out}", "batch_size=8", "steps=6",
                             "log_every=0", "checkpoint_every=0", "data.augment.enabled=false",
                             "model.backbone=resnet18", "model.crop_hw=64,48", "model.body_model=free", "device=cpu",
                             "threads=1", f"model.arch={arch}", "model.num_rois=1", f"model.head_dim={head}",
                             "losses.contrast=0", "losses.camera=0"])
    seen: dict[int, float] = {}
    res = train(cfg, progress=lambda ev: seen.__setitem__(ev["step"], ev["losses"]["loss"]) if ev["event"] == "step"
                else None)
    assert seen[6] < 0.8 * seen[1], seen
    from hmrcli.api import estimate_people
    from hmrcli.weights.catalogue import load_regressor

    img = np.full((192, 256, 3), 90, np.uint8)
    box = [[90, 30, 160, 180]]
    net = load_regressor(res.checkpoint)
    assert net.config.arch == arch and net.config.head_dim == head
    p0 = estimate_people(img, box, net, body=load_body_model("free"))[0]
    assert p0.vertices_model.shape == (13718, 3) and np.isfinite(p0.vertices_model).all()
    if arch == "imphmr":
        p90 = estimate_people(img, box, load_regressor(res.checkpoint, view_azimuth=90),
                              body=load_body_model("free"))[0]
        assert np.allclose(p90.cam_t, p0.cam_t)  # placed by the canonical view's camera
        assert not np.allclose(p90.rotmats[0], p0.rotmats[0])
