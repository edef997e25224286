"""The fitting optimiser: exact keypoint model, priors, initialisation and the synthetic check."""

import numpy as np
import pytest
import roma
import torch

from hmrcli.bench.fit_synthetic import evaluate_fit, synthetic_people
from hmrcli.body import load_body_model
from hmrcli.fit.landmarks import fuse_landmark_sets
from hmrcli.fit.optimize import (
    IK_BONES,
    FitInit,
    FitOptions,
    FitTargets,
    KeypointBody,
    fit_bodies,
    kabsch,
    swing_init,
)
from hmrcli.fit.priors import (
    JOINT_LIMITS,
    POSE_MEAN,
    bend_penalty,
    limit_penalty,
    pose_l2,
    sample_plausible_pose,
)


@pytest.fixture(scope="module")
def free():
    return load_body_model("free")


@pytest.fixture(scope="module")
def free_kb(free):
    return KeypointBody(free)


def test_keypoint_body_equals_the_body_model(free, fake_smpl_dir):
    fake = load_body_model("smpl", smpl_dir=fake_smpl_dir)
    rng = np.random.default_rng(0)
    for body in (free, fake):
        pose = torch.from_numpy(rng.normal(scale=0.4, size=(4, 24, 3)))
        betas = torch.from_numpy(rng.normal(size=(4, 10)))
        ref = body(pose, betas)
        kb = KeypointBody(body, dtype=torch.float64)
        kp, j = kb(roma.rotvec_to_rotmat(pose), betas)
        assert torch.allclose(kp, ref.keypoints_coco, atol=1e-9)
        assert torch.allclose(j, ref.joints, atol=1e-9)
    # the fake SMPL has pose correctives: they are part of the collapsed model
    assert KeypointBody(fake).mpd is not None


def test_priors():
    inside = torch.from_numpy(sample_plausible_pose(64, np.random.default_rng(1), 1.0))
    assert torch.all(limit_penalty(inside) == 0)
    lo = torch.from_numpy(JOINT_LIMITS[..., 0])
    assert torch.all(inside >= lo - 1e-12)
    out = inside.clone()
    out[:, 3, 0] = -1.0  # left knee (joint 4) bent forwards: impossible
    assert torch.all(limit_penalty(out) > 0.5)
    # bending the knee the right way costs less than the wrong way
    right, wrong = torch.zeros(1, 23, 3), torch.zeros(1, 23, 3)
    right[0, 3, 0], wrong[0, 3, 0] = 1.0, -1.0
    assert bend_penalty(right) < bend_penalty(wrong)
    assert pose_l2(torch.from_numpy(POSE_MEAN)[None]).item() == 0


def test_kabsch_recovers_rotation():
    rng = np.random.default_rng(2)
    r = roma.rotvec_to_rotmat(torch.from_numpy(rng.normal(size=(5, 3))))
    src = torch.from_numpy(rng.normal(size=(5, 6, 3)))
    src = src - src.mean(1, keepdim=True)
    dst = torch.einsum("bij,bnj->bni", r, src)
    assert torch.allclose(kabsch(src, dst), r, atol=1e-9)


def test_swing_init_points_limbs_along_the_3d_landmarks(free_kb):
    free_kb64 = free_kb
    rng = np.random.default_rng(3)
    b = 6
    aa = sample_plausible_pose(b, rng, 0.6)
    aa[:, [2, 5, 8, 12, 13]] = 0.0  # spine and collars at rest, as the initialisation assumes
    target_pose = roma.rotvec_to_rotmat(torch.from_numpy(aa).float())
    glob = roma.rotvec_to_rotmat(torch.from_numpy(rng.normal(scale=0.5, size=(b, 3))).float())
    rot = torch.cat([glob[:, None], target_pose], 1)
    kp3d, _ = free_kb64(rot, torch.zeros(b, 10))
    eye = torch.eye(3).expand(b, 24, 3, 3).clone()
    rest, _ = free_kb64(eye, torch.zeros(b, 10))
    local = swing_init(rest, glob, kp3d, torch.ones(b, 17))
    kp, _ = free_kb64(torch.cat([glob[:, None], local], 1), torch.zeros(b, 10))
    for _, ks, ke, _ in IK_BONES:
        d_fit = torch.nn.functional.normalize(kp[:, ke] - kp[:, ks], dim=-1)
        d_tgt = torch.nn.functional.normalize(kp3d[:, ke] - kp3d[:, ks], dim=-1)
        # (keypoints are skinned surface points, not rigidly on one bone: a few degrees)
        assert torch.all((d_fit * d_tgt).sum(-1) > 0.99)


def test_fuse_landmark_sets_drops_an_outlying_roi():
    rng = np.random.default_rng(4)
    truth = rng.uniform(0, 500, size=(33, 2))
    sets = truth[None] + rng.normal(scale=2.0, size=(5, 33, 2))
    sets[3] += 150.0  # one RoI found someone else
    vis = np.full((5, 33), 0.9)
    w3 = rng.normal(size=(5, 33, 3))
    f2, fv, f3, keep = fuse_landmark_sets(sets, vis, w3, box_size=400.0)
    assert keep.tolist() == [True, True, True, False, True]
    assert np.abs(f2 - truth).max() < 8.0
    assert f3.shape == (33, 3) and fv.shape == (33,)


def test_synthetic_check_pa_mpjpe_and_camera_distance(free, free_kb):
    """The issue's check: random plausible poses and shapes at 3-10 m, keypoints with 2 px
    and 3D joints with 2 cm noise -> PA-MPJPE <= 40 mm and distance within 10 %."""
    people = synthetic_people(free, 24, np.random.default_rng(0))
    fit = fit_bodies(free_kb, people.targets)
    ev = evaluate_fit(free, people, fit)
    assert ev["pa_mpjpe_mm"].max() <= 40.0, ev["pa_mpjpe_mm"]
    assert np.abs(ev["distance_err"]).max() <= 0.10, ev["distance_err"]
    assert ev["reproj_px"].mean() < 8.0
    # the rotation block is a proper rotation and the fitted bodies are in front of the camera
    assert np.allclose(np.linalg.det(fit.rotmats), 1.0, atol=1e-4)
    assert np.all(fit.transl[:, 2] > 1.0)


def test_fit_from_the_truth_stays_there(free, free_kb):
    people = synthetic_people(free, 4, np.random.default_rng(5), noise2d=0.0, noise3d=0.0)
    init = FitInit(people.rotmats, people.betas, people.transl)
    fit = fit_bodies(free_kb, people.targets, init=init)
    ev = evaluate_fit(free, people, fit)
    assert ev["reproj_px"].max() < 2.0
    assert ev["pa_kp_mm"].max() < 12.0
    assert np.abs(ev["distance_err"]).max() < 0.02


def test_fit_without_3d_landmarks_matches_the_2d(free, free_kb):
    people = synthetic_people(free, 6, np.random.default_rng(6))
    t = people.targets
    fit = fit_bodies(free_kb, FitTargets(t.kp2d, t.conf2d, t.K, t.box_size))
    assert np.all(fit.reproj_box < 0.03), fit.reproj_box
    assert np.all(fit.transl[:, 2] > 0.5)


def test_confidence_zero_landmarks_are_ignored(free, free_kb):
    people = synthetic_people(free, 4, np.random.default_rng(7))
    t = people.targets
    kp2d = t.kp2d.copy()
    conf = t.conf2d.copy()
    kp2d[:, 9] += 5000.0  # garbage left wrist ...
    conf[:, 9] = 0.0  # ... with confidence 0
    conf3 = conf.copy()
    fit = fit_bodies(free_kb, FitTargets(kp2d, conf, t.K, t.box_size, t.kp3d, conf3))
    ev = evaluate_fit(free, people, fit)
    assert np.abs(ev["distance_err"]).max() < 0.1
    assert ev["pa_kp_mm"].mean() < 60


def test_empty_batch(free_kb):
    z = np.zeros((0, 17, 2))
    fit = fit_bodies(free_kb, FitTargets(z, np.zeros((0, 17)), np.zeros((0, 3, 3)), np.zeros(0)))
    assert fit.rotmats.shape == (0, 24, 3, 3)


def test_options_change_the_schedule(free, free_kb):
    people = synthetic_people(free, 2, np.random.default_rng(8))
    fit = fit_bodies(free_kb, people.targets, options=FitOptions(camera_iters=0, body_iters=2,
                                                                  body_stages=((1e-2, 1.0, 1e-3, 1e-2, 0.3),)))
    assert fit.stages == ["body0"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_matches_cpu(free, free_kb):
    people = synthetic_people(free, 4, np.random.default_rng(9))
    cpu = fit_bodies(free_kb, people.targets)
    gpu = fit_bodies(KeypointBody(free, device="cuda"), people.targets, device="cuda")
    ev_c, ev_g = evaluate_fit(free, people, cpu), evaluate_fit(free, people, gpu)
    assert np.abs(ev_c["pa_mpjpe_mm"] - ev_g["pa_mpjpe_mm"]).max() < 5.0
    assert np.abs(cpu.transl - gpu.transl).max() < 0.05


def test_learned_pose_prior_fits_as_well_as_the_relaxed_one(free, free_kb):
    """--pose-prior gmm (the mixture learned from motion capture): the synthetic check still
    holds, and a prior name that does not exist is refused."""
    people = synthetic_people(free, 8, np.random.default_rng(0))
    relaxed = evaluate_fit(free, people, fit_bodies(free_kb, people.targets))
    gmm = evaluate_fit(free, people, fit_bodies(free_kb, people.targets, options=FitOptions(pose_prior="gmm")))
    assert gmm["pa_mpjpe_mm"].max() <= 40.0, gmm["pa_mpjpe_mm"]
    assert np.abs(gmm["distance_err"]).max() <= 0.10
    assert gmm["pa_mpjpe_mm"].mean() <= relaxed["pa_mpjpe_mm"].mean() + 5.0
    with pytest.raises(ValueError, match="unknown pose prior"):
        fit_bodies(free_kb, people.targets, options=FitOptions(pose_prior="vae"))
