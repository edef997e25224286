"""benchmarks/real_frames.py: the parts that need no restricted data (a synthetic data root
in MMPose's layout, intrinsics, joint maps, metrics, output scoring, command building,
download checks). The real run needs the Human3.6M / MPI-INF-3DHP fixtures and is not
part of the test suite."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pickle
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rf():
    spec = importlib.util.spec_from_file_location("real_frames", ROOT / "benchmarks" / "real_frames.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["real_frames"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def body():
    from hmrcli.body import load_body_model

    return load_body_model("free")


def _h36m_joints(z=5.0):
    """17 H36M joints (camera frame, metres) of a person standing at depth z, facing the
    camera: the person's left is camera +x."""
    j = np.zeros((17, 3))
    j[:, 2] = z
    y = {0: 0.0, 1: 0.0, 2: 0.45, 3: 0.85, 4: 0.0, 5: 0.45, 6: 0.85, 7: -0.25, 8: -0.5,
         9: -0.6, 10: -0.7, 11: -0.5, 12: -0.25, 13: 0.0, 14: -0.5, 15: -0.25, 16: 0.0}
    x = {1: -0.12, 2: -0.12, 3: -0.12, 4: 0.12, 5: 0.12, 6: 0.12, 11: 0.18, 12: 0.22, 13: 0.24,
         14: -0.18, 15: -0.22, 16: -0.24}
    for i in range(17):
        j[i, 0], j[i, 1] = x.get(i, 0.0), y[i]
    return j


def make_root(tmp_path: Path) -> Path:
    """A data root in MMPose's tests/data layout: one H36M frame, one 3DHP test frame."""
    import cv2

    root = tmp_path / "data"
    rel = "S9/S9_Walking.54138969/S9_Walking.54138969_000001.jpg"
    (root / "h36m" / Path(rel).parent).mkdir(parents=True)
    cv2.imwrite(str(root / "h36m" / rel), np.full((1002, 1000, 3), 128, np.uint8))
    S = np.concatenate([_h36m_joints(5.0), np.ones((17, 1))], 1)[None]
    np.savez(root / "h36m" / "test_h36m_body3d.npz", imgname=np.array([rel]), S=S,
             center=np.array([[500.0, 520.0]]), scale=np.array([2.0]), part=np.zeros((1, 17, 3)))
    cams = {("S9", "54138969"): {"f": np.array([[1145.0], [1143.0]]), "c": np.array([[512.5], [515.5]]),
                                 "R": np.eye(3), "T": np.zeros((3, 1)), "w": 1000, "h": 1002}}
    (root / "h36m" / "cameras.pkl").write_bytes(pickle.dumps(cams))

    d3 = root / "mpi_inf_3dhp"
    d3.mkdir()
    cv2.imwrite(str(d3 / "TS3_000010.jpg"), np.full((600, 800, 3), 90, np.uint8))
    j = np.arange(17 * 3, dtype=np.float64).reshape(17, 3) * 0.01 + np.array([0, 0, 3.0])
    np.savez(d3 / "test_3dhp_test.npz", imgname=np.array(["TS3_000010.jpg"]),
             S=np.concatenate([j, np.ones((17, 1))], 1)[None], center=np.array([[400.0, 300.0]]),
             scale=np.array([1.5]), part=np.zeros((1, 17, 3)))
    (d3 / "cameras_test.pkl").write_bytes(pickle.dumps(
        {"TS3": {"f": np.array([[1500.0], [1501.0]]), "c": np.array([[410.0], [290.0]]), "w": 800, "h": 600}}))
    return root


def test_limb_names_are_coco_limbs(rf):
    from hmrcli.body import COCO17_NAMES

    assert rf.LIMB_NAMES == COCO17_NAMES[5:17]
    assert [rf.LIMB_NAMES[i] for i in rf.LIMB_HIPS] == ["left_hip", "right_hip"]


def test_joint_maps_by_name(rf):
    h36m = ("root", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "spine",
            "thorax", "neck", "head", "left_shoulder", "left_elbow", "left_wrist", "right_shoulder",
            "right_elbow", "right_wrist")
    mpi = ("head_top", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
           "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
           "pelvis", "spine", "head")
    assert tuple(h36m[i] for i in rf.H36M_LIMB) == rf.LIMB_NAMES
    assert tuple(mpi[i] for i in rf.MPI3DHP_LIMB) == rf.LIMB_NAMES


def test_load_synthetic_root(rf, tmp_path):
    root = make_root(tmp_path)
    for given in (root, tmp_path / "data", tmp_path):  # DIR, and DIR whose data/ holds it
        assert rf.resolve_root(given) == root
    frames = rf.load_frames(root)
    assert [f.name for f in frames] == ["h36m_S9_Walking.54138969_000001.jpg", "3dhp_TS3_000010.jpg"]
    h, m = frames
    assert (h.width, h.height) == (1000, 1002) and (m.width, m.height) == (800, 600)
    np.testing.assert_allclose(h.K, [[1145.0, 0, 512.5], [0, 1143.0, 515.5], [0, 0, 1]])
    np.testing.assert_allclose(m.K, [[1500.0, 0, 410.0], [0, 1501.0, 290.0], [0, 0, 1]])
    # limbs: H36M left_wrist is joint 13, right_hip joint 1
    np.testing.assert_allclose(h.limbs[4], _h36m_joints()[13])
    np.testing.assert_allclose(h.limbs[7], _h36m_joints()[1])
    # 3DHP joint i holds (0.03 i, 0.03 i + 0.01, 3 + 0.03 i + 0.02): left_shoulder is joint 5
    np.testing.assert_allclose(m.limbs[0], [0.15, 0.16, 3.17])
    assert h.box_dataset == [300.0, 320.0, 700.0, 720.0]


def test_project_and_gt_box(rf, tmp_path):
    fr = rf.load_frames(make_root(tmp_path))[0]
    p = rf.project(fr.K, fr.joints17)
    # the root (0, 0, 5) lands on the principal point, not the image centre
    np.testing.assert_allclose(p[0], [512.5, 515.5])
    np.testing.assert_allclose(p[13], [512.5 + 1145.0 * 0.24 / 5, 515.5])
    x1, y1, x2, y2 = rf.gt_box(fr, pad=0.15)
    lo, hi = p.min(0), p.max(0)
    assert x2 - x1 == pytest.approx((hi[0] - lo[0]) * 1.15)
    assert y2 - y1 == pytest.approx((hi[1] - lo[1]) * 1.15)
    assert (x1 + x2) / 2 == pytest.approx((lo[0] + hi[0]) / 2)
    # clipped to the image
    fr.joints17[:, 0] -= 3.0
    assert rf.gt_box(fr)[0] == 0.0
    assert rf.person_box(fr, "dataset") == [300.0, 320.0, 700.0, 720.0]


def test_limb_errors_hand_computed(rf):
    gt = _h36m_joints(4.0)[list(rf.H36M_LIMB)]
    # a shifted copy: zero MPJPE / PA-MPJPE, root offset = the shift
    e = rf.limb_errors(gt + [0.1, 0.0, 0.3], gt)
    assert e["mpjpe_mm"] == pytest.approx(0.0, abs=1e-9)
    assert e["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)
    assert e["root_depth_err_m"] == pytest.approx(0.3)
    assert e["root_err_m"] == pytest.approx(np.hypot(0.1, 0.3))
    # one wrist 120 mm off in depth: MPJPE = 120 / 12 = 10 mm, only that joint errs
    p = gt.copy()
    p[5, 2] += 0.12
    e = rf.limb_errors(p, gt)
    assert e["mpjpe_mm"] == pytest.approx(10.0)
    assert e["per_joint_mm"][5] == pytest.approx(120.0)
    assert np.count_nonzero(e["per_joint_mm"] > 1e-9) == 1
    # Procrustes minimises the squared errors: mean distance <= RMS <= the unaligned RMS
    assert 0 < e["pa_mpjpe_mm"] <= 120.0 / np.sqrt(12)
    # hips moved apart symmetrically: the mid-hip stays, both hips err by 50 mm
    p = gt.copy()
    p[6, 0] += 0.05
    p[7, 0] -= 0.05
    e = rf.limb_errors(p, gt)
    assert e["mpjpe_mm"] == pytest.approx(100.0 / 12)
    assert e["root_err_m"] == pytest.approx(0.0, abs=1e-12)
    # a rotated, scaled copy: PA removes it, MPJPE does not
    c = np.cos(0.5), np.sin(0.5)
    R = np.array([[c[0], 0, c[1]], [0, 1, 0], [-c[1], 0, c[0]]])
    e = rf.limb_errors(1.3 * gt @ R.T, gt)
    assert e["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)
    assert e["mpjpe_mm"] > 50


def test_constant_pose_upright_facing_camera(rf, body):
    j = rf.constant_pose_limbs(body)
    n = {name: j[i] for i, name in enumerate(rf.LIMB_NAMES)}
    np.testing.assert_allclose(rf.mid_hip(j), 0.0, atol=1e-12)
    assert n["left_shoulder"][0] > n["right_shoulder"][0]  # facing the camera: left on image right
    assert n["left_shoulder"][1] < n["left_hip"][1] < n["left_knee"][1] < n["left_ankle"][1]  # y down
    assert n["left_wrist"][1] > n["left_shoulder"][1] + 0.3  # arms hang down (not a T-pose)


def _write_params(path: Path, rotmats, betas, transl, body_model="free"):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, rotmats=rotmats, betas=betas, transl=transl, body_model=np.array(body_model),
             betas_applied=np.array(True))


def test_score_outputs_against_the_body_model(rf, body, tmp_path):
    import torch

    from hmrcli.body.pose_limits import sample_plausible_pose

    frames = rf.load_frames(make_root(tmp_path))
    rng = np.random.default_rng(0)
    pose = np.zeros((1, 24, 3))
    pose[0, 0] = (np.pi, 0, 0)
    pose[0, 1:] = sample_plausible_pose(1, rng)[0]
    out = body(torch.as_tensor(pose))
    rot = out.rotmats[0].double().numpy()
    betas = rng.normal(size=10) * 0.5
    transl = np.array([0.2, -0.1, 5.0])
    kp = body(torch.as_tensor(rot[None]), torch.as_tensor(betas[None]), torch.as_tensor(transl[None])).keypoints_coco[0]
    # make the frames' GT equal the body's limb joints, the second one 0.25 m deeper
    for k, fr in enumerate(frames):
        fr.joints17 = np.zeros((17, 3))
        fr.joints17[list(fr.limb_index)] = rf.coco_limbs(kp.double().numpy()) + [0, 0, 0.25 * k]
    out_dir = tmp_path / "out"
    for fr in frames:
        _write_params(out_dir / fr.name / "person_00.params.npz", rot, betas, transl)
    (out_dir / fr.name / "person_00.camera.json").write_text(json.dumps(
        {"K_source": "test", "estimate": {"fit": {"reproj_px": 1.5}}}))
    res = rf.score_outputs({"free": body}, frames, out_dir)
    a, b = (res[f.name] for f in frames)
    assert a["mpjpe_mm"] == pytest.approx(0.0, abs=1e-3) and a["pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-3)
    assert a["root_depth_err_m"] == pytest.approx(0.0, abs=1e-6)
    assert b["mpjpe_mm"] == pytest.approx(0.0, abs=1e-3)
    assert b["root_depth_err_m"] == pytest.approx(-0.25, abs=1e-6)
    assert b["fit_reproj_px"] == 1.5 and b["K_source"] == "test" and "landmark_err_px" not in b
    # a missing person is reported, not scored
    (out_dir / frames[0].name / "person_00.params.npz").unlink()
    (out_dir / "errors.jsonl").write_text(json.dumps({"file": f"x/{frames[0].name}", "stage": "landmarks",
                                                      "message": "no landmarks"}) + "\n")
    res = rf.score_outputs({"free": body}, frames, out_dir)
    assert res[frames[0].name] == {"error": "landmarks: no landmarks"}
    s = rf.summarize(res, frames)
    assert s["all"]["frames"] == 1 and s["all"]["of"] == 2
    assert s["all"]["abs_root_depth_err_m"] == pytest.approx(0.25, abs=1e-3)


def test_landmark_error_px(rf, body, tmp_path):
    frames = rf.load_frames(make_root(tmp_path))[:1]
    fr = frames[0]
    rot = np.tile(np.eye(3), (24, 1, 1))
    _write_params(tmp_path / "o" / fr.name / "person_00.params.npz", rot, np.zeros(10), np.array([0, 0, 5.0]))
    lm = np.zeros((17, 2))
    lm[5:17] = rf.project(fr.K, fr.limbs) + [3.0, 4.0]  # every limb landmark 5 px off
    (tmp_path / "o" / fr.name / "person_00.camera.json").write_text(
        json.dumps({"estimate": {"landmarks": {"kp2d_px": lm.tolist()}}, "quality": {"score": 0.42, "flags": ["tiny"]}}))
    r = rf.score_outputs({"free": body}, frames, tmp_path / "o")[fr.name]
    assert r["landmark_err_px"] == pytest.approx(5.0)
    assert r["quality_score"] == 0.42 and r["quality_flags"] == ["tiny"]


def test_summary_means(rf, tmp_path):
    frames = rf.load_frames(make_root(tmp_path))
    pj = np.zeros(12)
    per = {frames[0].name: {"pa_mpjpe_mm": 10.0, "mpjpe_mm": 20.0, "per_joint_mm": pj + 2, "root_depth_err_m": -0.4},
           frames[1].name: {"pa_mpjpe_mm": 30.0, "mpjpe_mm": 60.0, "per_joint_mm": pj + 4, "root_depth_err_m": 0.2}}
    s = rf.summarize(per, frames)
    assert s["all"]["pa_mpjpe_mm"] == 20.0 and s["all"]["mpjpe_mm"] == 40.0
    assert s["all"]["abs_root_depth_err_m"] == pytest.approx(0.3)
    assert s["all"]["per_joint_mm"]["left_wrist"] == 3.0
    assert s["h36m"]["mpjpe_mm"] == 20.0 and s["mpi_inf_3dhp"]["mpjpe_mm"] == 60.0


def test_summary_ranks_frames_by_quality_score(rf, tmp_path):
    """The quality score against the frames' PA-MPJPE (issue: "on real frames with 3D ground
    truth"): a score that orders the frames exactly gives Spearman 1, and the best half by score
    is the two lowest errors."""
    base = rf.load_frames(make_root(tmp_path))[0]
    frames = [rf.Frame(name=f"f{k}.jpg", dataset="h36m", image=base.image, K=base.K, joints17=base.joints17,
                       limb_index=rf.H36M_LIMB) for k in range(4)]
    pj = np.zeros(12)
    per = {f.name: {"pa_mpjpe_mm": e, "mpjpe_mm": e, "per_joint_mm": pj, "quality_score": q}
           for f, e, q in zip(frames, (10.0, 20.0, 30.0, 40.0), (0.9, 0.5, 0.2, 0.1))}
    s = rf.summarize(per, frames)["all"]["quality_ranking"]
    assert s["spearman"] == 1.0 and s["mean_error_all_mm"] == 25.0
    assert s["mean_error_best_50pct_mm"] == 15.0 and s["reduction_best_50pct"] == 40.0
    per[frames[0].name]["quality_score"] = 0.0  # the best frame now scored worst
    assert rf.summarize(per, frames)["all"]["quality_ranking"]["spearman"] < 0.0


def test_focal_groups(rf, tmp_path):
    frames = rf.load_frames(make_root(tmp_path))
    extra = rf.Frame(name="x.jpg", dataset="h36m", image=frames[0].image, K=frames[0].K * [[1.004], [1.004], [1]],
                     joints17=frames[0].joints17, limb_index=rf.H36M_LIMB)
    groups = rf.focal_groups(frames + [extra])
    assert [sorted(f.name for f in fs) for _, fs in groups] == [
        sorted([frames[0].name, "x.jpg"]), [frames[1].name]]
    assert groups[0][0] == pytest.approx((1144.0 + 1144.0 * 1.004) / 2)
    assert groups[1][0] == pytest.approx(1500.5)


FAKE_CLI = """#!{py}
import json, sys, pathlib
args = sys.argv[1:]
log = pathlib.Path({log!r})
with log.open("a") as f:
    f.write(json.dumps(args) + "\\n")
if args[:2] == ["infer", "--help"]:
    print({help!r})
"""


@pytest.mark.parametrize("with_intrinsics", [True, False])
def test_commands_and_skips(rf, tmp_path, with_intrinsics):
    frames = rf.load_frames(make_root(tmp_path))
    exe = tmp_path / "hmrcli"
    log = tmp_path / "calls.jsonl"
    help_text = "--out --boxes --rois --focal" + (" --intrinsics" if with_intrinsics else "")
    exe.write_text(FAKE_CLI.format(py=sys.executable, log=str(log), help=help_text))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    flags = rf.cli_flags(str(exe))
    assert ("--intrinsics" in flags) is with_intrinsics and "--landmarks" not in flags
    img_dir, boxes, intr = rf.write_inputs(frames, tmp_path / "w", "gt2d", 0.15)
    recs = [json.loads(x) for x in boxes.read_text().splitlines()]
    assert [r["name"] for r in recs] == [f.name for f in frames]
    assert all(Path(r["path"]).resolve() == f.image.resolve() for r, f in zip(recs, frames))
    assert recs[0]["persons"][0]["box_xyxy"] == [round(v, 2) for v in rf.gt_box(frames[0])]
    k = json.loads(intr.read_text())["images"]
    np.testing.assert_allclose(k[frames[1].name]["K"], frames[1].K)
    cmds, _, errors = rf.run_variant(str(exe), ["--rois", "1"], frames, img_dir, boxes,
                                     intr if with_intrinsics else None, tmp_path / "out", overlay=False)
    assert errors == []
    if with_intrinsics:
        assert len(cmds) == 1 and cmds[0][cmds[0].index("--intrinsics") + 1] == str(intr)
        assert str(img_dir) in cmds[0] and "--focal" not in cmds[0]
    else:  # one call per focal length, each naming its images
        assert len(cmds) == 2 and all("--intrinsics" not in c for c in cmds)
        assert [c[c.index("--focal") + 1] for c in cmds] == ["1144.000", "1500.500"]
        assert str(img_dir / frames[1].name) in cmds[1]
    assert all(c[-2:] == ["--rois", "1"] and c[c.index("--boxes") + 1] == str(boxes) for c in cmds)
    assert len(log.read_text().splitlines()) == 1 + len(cmds)


def test_download_checks(rf, tmp_path):
    src = tmp_path / "mirror"
    (src / "h36m").mkdir(parents=True)
    payload = b"camera data"
    (src / "h36m" / "cameras.pkl").write_bytes(payload)
    good = {"h36m/cameras.pkl": hashlib.sha256(payload).hexdigest()}
    url = "file://" + str(src) + "/{path}"
    dest = tmp_path / "dest"
    assert rf.download(dest, files=good, url_template=url) == ["h36m/cameras.pkl"]
    assert (dest / "h36m" / "cameras.pkl").read_bytes() == payload
    assert rf.download(dest, files=good, url_template=url) == []  # present and verified: not fetched again
    (dest / "h36m" / "cameras.pkl").write_bytes(b"truncated")  # present but wrong: fetched again
    assert rf.download(dest, files=good, url_template=url) == ["h36m/cameras.pkl"]
    assert (dest / "h36m" / "cameras.pkl").read_bytes() == payload
    bad = {"h36m/cameras.pkl": "0" * 64}
    with pytest.raises(SystemExit, match="sha256"):
        rf.download(tmp_path / "d2", files=bad, url_template=url)
    assert not (tmp_path / "d2" / "h36m" / "cameras.pkl").exists()
    with pytest.raises(SystemExit, match="cannot fetch"):
        rf.download(tmp_path / "d3", files={"h36m/missing.npz": "0" * 64}, url_template=url)


def test_pinned_file_list(rf):
    assert len(rf.MMPOSE_COMMIT) == 40 and len(rf.FILES) == 14
    assert all(len(h) == 64 for h in rf.FILES.values())
    assert not any(p.suffix in (".jpg", ".npz", ".pkl") for p in (ROOT / "benchmarks").rglob("*") if p.is_file())


def test_unsafe_camera_pickle_refused(rf, tmp_path):
    root = make_root(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (root / "h36m" / "cameras.pkl").write_bytes(pickle.dumps({("S9", "54138969"): Evil()}))
    from hmrcli.body import UnsafePickleError

    with pytest.raises(UnsafePickleError):
        rf.load_h36m(root)
