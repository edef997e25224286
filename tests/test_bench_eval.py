"""Synthetic datasets -> readers -> evaluation loop, with oracle predictors (mm)."""

import json

import numpy as np
import pytest
from _fake_smpl import make_fake_smpl, write_chumpy_pickle

from hmrcli.bench import datasets as D
from hmrcli.bench import evaluate as E
from hmrcli.bench.synthetic import write_synthetic_3dpw, write_synthetic_h36m
from hmrcli.body.safe_pickle import UnsafePickleError


@pytest.fixture(scope="module")
def bench_smpl_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_smpl")
    write_chumpy_pickle(d / "SMPL_NEUTRAL.pkl", make_fake_smpl(seed=0))
    write_chumpy_pickle(d / "SMPL_MALE.pkl", make_fake_smpl(seed=1))
    write_chumpy_pickle(d / "SMPL_FEMALE.pkl", make_fake_smpl(seed=2))
    rng = np.random.default_rng(5)
    reg = np.zeros((17, 6890))
    for k in range(17):
        reg[k, rng.choice(6890, 20, replace=False)] = 1 / 20
    np.save(d / "J_regressor_h36m.npy", reg)
    return d


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory, bench_smpl_dir):
    root = tmp_path_factory.mktemp("synth3dpw")
    info = write_synthetic_3dpw(root, bench_smpl_dir, n_sequences=2, n_frames=3, n_people=2)
    write_synthetic_h36m(root, bench_smpl_dir, n=4)
    return root, info


def test_readers_agree(synth_root):
    root, info = synth_root
    a = D.read_3dpw_sequences(root, "test")
    b = D.read_spin_npz(root / "3dpw_test.npz", "3dpw")
    assert len(a) == len(b) == info["samples"] == 2 * (2 * 3 - 1)  # one invalid campose frame per sequence
    for x, y in zip(sorted(a, key=lambda s: str(s.image) + s.gender), sorted(b, key=lambda s: str(s.image) + s.gender)):
        assert x.image == y.image and x.gender == y.gender and x.sequence == y.sequence
        assert np.allclose(x.pose, y.pose, atol=1e-6)  # world -> camera frame orientation
        assert np.allclose(x.betas, y.betas) and np.allclose(x.box, y.box)
        assert x.image.is_file()
    assert {s.gender for s in a} == {"male", "female"}


def test_sequence_pickle_is_restricted(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"poses": Evil()}, protocol=2))
    with pytest.raises(UnsafePickleError):
        D.load_sequence_pickle(p)


def test_npz_object_arrays_refused(tmp_path):
    p = tmp_path / "3dpw_test.npz"
    np.savez(p, imgname=np.array(["a.jpg", None], dtype=object), center=np.zeros((2, 2)), scale=np.ones(2),
             pose=np.zeros((2, 72)), shape=np.zeros((2, 10)), gender=np.array(["m", "f"]))
    with pytest.raises(D.DatasetError, match="pickled object arrays"):
        D.read_spin_npz(p)


def test_ground_truth_predictor_scores_zero(synth_root, bench_smpl_dir):
    root, _ = synth_root
    for samples in (D.read_3dpw_sequences(root), D.read_spin_npz(root / "3dpw_test.npz")):
        res = E.evaluate(samples, E.GroundTruthPredictor(), bench_smpl_dir, batch_size=4)
        for m in E.METRICS:
            assert res["overall"][m] == pytest.approx(0, abs=1e-6)
        assert set(res["sequences"]) == {"synthetic_seq_00", "synthetic_seq_01"}
        assert sum(v["count"] for v in res["sequences"].values()) == res["count"] == len(samples)


def test_perturbed_and_neutral_predictors_score_above_zero(synth_root, bench_smpl_dir):
    root, _ = synth_root
    samples = D.read_spin_npz(root / "3dpw_test.npz")
    res = E.evaluate(samples, E.GroundTruthPredictor(pose_noise=0.1, betas_noise=0.5), bench_smpl_dir)
    o = res["overall"]
    assert o["MPJPE"] > 1 and o["PA-MPJPE"] > 0.5 and o["PVE"] > 1
    assert o["PA-MPJPE"] <= o["MPJPE"] + 1e-9
    # GT pose posed with the neutral model: mixed-gender GT bodies differ from it -> > 0
    res_n = E.evaluate(samples, E.GroundTruthPredictor(body_gender="neutral"), bench_smpl_dir)
    assert res_n["overall"]["PVE"] > 1


def test_h36m_joints_path(synth_root, bench_smpl_dir):
    root, _ = synth_root
    samples, _src = D.load_dataset("h36m", root)
    assert samples[0].joints3d.shape == (17, 4) and samples[0].gender == "neutral"
    res = E.evaluate(samples, E.GroundTruthPredictor(), bench_smpl_dir)
    assert res["overall"]["MPJPE"] == pytest.approx(0, abs=1e-6)
    assert res["overall"]["PVE"] is None
    res2 = E.evaluate(samples, E.GroundTruthPredictor(pose_noise=0.1), bench_smpl_dir)
    assert res2["overall"]["PA-MPJPE"] > 0.5


def test_missing_assets_message(tmp_path, synth_root):
    root, _ = synth_root
    samples = D.read_spin_npz(root / "3dpw_test.npz")
    with pytest.raises(E.BenchmarkAssetsError) as ei:
        E.evaluate(samples, E.GroundTruthPredictor(body_gender="neutral"), tmp_path)
    msg = str(ei.value)
    assert "SMPL female" in msg and "SMPL male" in msg and "SMPL neutral" in msg and "J_regressor_h36m.npy" in msg
    assert str(tmp_path) in msg


def test_published_figures():
    rows = E.published_figures("res50-PA45.7_MJE72.0_MVE85.3_3dpw.pt", "3dpw")
    assert rows[0]["source"] == "checkpoint cliff-res50" and rows[0]["MPJPE"] == 72.0
    assert any(r["source"] == "paper multiroi-res50" for r in rows)
    json.dumps(rows)


def test_camera_frame_pose_is_rotated_world_body(synth_root, bench_smpl_dir):
    import torch

    from hmrcli.body import load_body_model

    root, _ = synth_root
    raw = D.load_sequence_pickle(root / "sequenceFiles" / "test" / "synthetic_seq_00.pkl")
    samples = [s for s in D.read_3dpw_sequences(root) if s.sequence == "synthetic_seq_00" and s.extra["person"] == 1]
    body = load_body_model("smpl", samples[0].gender, bench_smpl_dir)
    fi = list(raw["img_frame_ids"]).index(samples[0].frame)
    world = body(torch.as_tensor(raw["poses"][1][fi:fi + 1]), torch.as_tensor(raw["betas"][1][None, :10]))
    cam = body(torch.as_tensor(samples[0].pose[None]), torch.as_tensor(samples[0].betas[None]))
    r = raw["cam_poses"][fi][:3, :3]
    vw = (world.vertices[0] - world.joints[0, 0]).numpy() @ r.T
    vc = (cam.vertices[0] - cam.joints[0, 0]).numpy()
    assert np.allclose(vw, vc, atol=1e-6)


def test_mixed_gender_batch_through_gt_models(bench_smpl_dir):
    import torch

    from hmrcli.bench.metrics import mesh_metrics
    from hmrcli.bench.synthetic import random_poses
    from hmrcli.body import load_body_model

    rng = np.random.default_rng(3)
    pose = torch.as_tensor(random_poses(2, rng))
    betas = torch.as_tensor(rng.normal(size=(2, 10)))
    male, female = (load_body_model("smpl", g, bench_smpl_dir) for g in ("male", "female"))
    gt = torch.stack([male(pose[:1], betas[:1]).vertices[0], female(pose[1:], betas[1:]).vertices[0]])
    reg = np.load(bench_smpl_dir / "J_regressor_h36m.npy")
    m = mesh_metrics(gt, gt, reg)
    assert all(np.allclose(v, 0, atol=1e-9) for v in m.values())
    swapped = torch.stack([female(pose[:1], betas[:1]).vertices[0], male(pose[1:], betas[1:]).vertices[0]])
    m2 = mesh_metrics(swapped, gt, reg)
    assert (m2["PVE"] > 1).all() and (m2["MPJPE"] > 0).all()
    one = mesh_metrics(swapped[1:], gt[1:], reg)  # batching does not mix samples
    assert m2["PA-MPJPE"][1] == pytest.approx(one["PA-MPJPE"][0])


def test_engine_box_maps_back_to_dataset_box():
    from hmrcli.geometry.boxes import box_from_xyxy
    from hmrcli.nn.checkpoints import RegressorConfig

    for cfg in (RegressorConfig(arch="multiroi", backbone="resnet50", num_rois=5),
                RegressorConfig(arch="multiroi", backbone="resnet50", num_rois=1, aspect="square", box_rescale=None)):
        box = np.array([120.0, 90.0, 150.0])
        assert np.allclose(box_from_xyxy(E.engine_xyxy(box, cfg), cfg.aspect, cfg.box_rescale), box)


def test_spin_j24_joints_match_h36m_lsp_mapping():
    from hmrcli.bench.metrics import H36M_TO_LSP14

    # SPIN's h36m preprocessing puts H36M joint i at J24 index global_idx[i]
    global_idx = [14, 3, 4, 5, 2, 1, 0, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6]
    j17 = np.random.default_rng(2).normal(size=(2, 17, 3))
    s24 = np.zeros((2, 24, 4))
    s24[:, global_idx, :3] = j17
    s24[:, global_idx, 3] = 1
    g14, ok = E._gt_joints_from_s(s24)
    mid_hip = (j17[:, 4] + j17[:, 1]) / 2  # J24 2 and 3 (right/left hip)
    assert ok.all()
    assert np.allclose(g14, j17[:, list(H36M_TO_LSP14)] - mid_hip[:, None])
    s24[0, 5, 3] = 0  # unannotated joint -> masked out
    assert not E._gt_joints_from_s(s24)[1][0, 5]
