"""``hmrcli benchmark`` end to end on the synthetic dataset (fake SMPL, synthetic regressor)."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _fake_smpl import make_fake_smpl, reference_lbs, write_chumpy_pickle
from _probe import small_checkpoint
from typer.testing import CliRunner

from hmrcli.bench.synthetic import write_synthetic_3dpw
from hmrcli.cli import app
from hmrcli.nn.checkpoints import RegressorConfig, build_model, save_native

runner = CliRunner()
METRICS = ("MPJPE", "PA-MPJPE", "PVE")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_smpl")
    for g, seed in (("NEUTRAL", 0), ("MALE", 1), ("FEMALE", 2)):
        write_chumpy_pickle(d / f"SMPL_{g}.pkl", make_fake_smpl(seed=seed))
    rng = np.random.default_rng(5)
    reg = np.zeros((17, 6890))
    for k in range(17):
        reg[k, rng.choice(6890, 20, replace=False)] = 1 / 20
    np.save(d / "J_regressor_h36m.npy", reg)
    root = tmp_path_factory.mktemp("cli_3dpw")
    write_synthetic_3dpw(root, d, n_sequences=2, n_frames=2, n_people=2)
    return d, root


def test_ground_truth_predictor_cli_json(setup):
    smpl, root = setup
    r = runner.invoke(app, ["benchmark", "--dataset", "3dpw", "--data-root", str(root), "--smpl-dir", str(smpl),
                            "--ground-truth-predictor", "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["count"] == 6 and rep["units"] == "mm" and "Procrustes" in rep["protocol"]
    for m in ("MPJPE", "PA-MPJPE", "PVE"):
        assert rep["overall"][m] == pytest.approx(0, abs=1e-6)
    assert set(rep["sequences"]) == {"synthetic_seq_00", "synthetic_seq_01"}
    assert any(p["source"].startswith("paper") for p in rep["published"])


def test_table_output_and_errors(setup, tmp_path):
    smpl, root = setup
    r = runner.invoke(app, ["benchmark", "--dataset", "3dpw", "--data-root", str(root), "--smpl-dir", str(smpl),
                            "--ground-truth-predictor", "--no-json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "PA-MPJPE" in r.stdout and "synthetic_seq_01" in r.stdout and "published" in r.stdout
    # the ground truth scores 0.0 mm in every column of every row of ours
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:6]]
            for line in r.stdout.splitlines() if line.count("│") >= 6}
    assert rows["ours (overall)"] == ["6", "0.0", "0.0", "0.0"], rows
    assert rows["synthetic_seq_00"][1:] == rows["synthetic_seq_01"][1:] == ["0.0", "0.0", "0.0"], rows
    assert int(rows["synthetic_seq_00"][0]) + int(rows["synthetic_seq_01"][0]) == 6
    r = runner.invoke(app, ["benchmark", "--dataset", "3dpw", "--data-root", str(root), "--smpl-dir", str(tmp_path),
                            "--ground-truth-predictor", "--json"])
    assert r.exit_code == 2 and "J_regressor_h36m.npy" in r.output and "SMPL female" in r.output
    r = runner.invoke(app, ["benchmark", "--dataset", "h36m", "--data-root", str(tmp_path), "--smpl-dir", str(smpl),
                            "--ground-truth-predictor", "--json"])
    assert r.exit_code == 2 and "h36m_valid_protocol2.npz" in r.output
    r = runner.invoke(app, ["benchmark", "--dataset", "3dpw", "--data-root", str(root), "--json"])
    assert r.exit_code == 2 and "give --checkpoint, or --ground-truth-predictor" in r.output


def test_network_checkpoint_runs(setup, tmp_path):
    smpl, root = setup
    torch.manual_seed(0)
    cfg = RegressorConfig(arch="multiroi", backbone="resnet50", num_rois=2)
    path = save_native(build_model(cfg).eval(), cfg, tmp_path / "rand")
    r = runner.invoke(app, ["benchmark", "--dataset", "3dpw", "--data-root", str(root), "--smpl-dir", str(smpl),
                            "--checkpoint", str(path), "--limit", "2", "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["count"] == 2 and rep["num_rois"] == 2 and rep["aggregation"] in ("code", "paper")
    assert rep["aggregation"] == "code"  # the checkpoint's (RegressorConfig's default); no override given
    assert rep["overall"]["MPJPE"] > 0 and rep["overall"]["PA-MPJPE"] <= rep["overall"]["MPJPE"] + 1e-9
    assert (rep["checkpoint"], rep["dataset"], rep["split"], rep["boxes"], rep["device"]) == (
        str(path), "3dpw", "test", "dataset", "cpu")
    # --limit 2: the first two persons, both of the first sequence; overall = that sequence
    assert rep["sequences"] == {"synthetic_seq_00": {"count": 2, **{m: rep["overall"][m] for m in METRICS}}}
    assert rep["overall"]["PVE"] > 0 and rep["overall"]["PA-MPJPE"] > 0


@pytest.mark.parametrize("arch,head", [("imphmr", 16), ("pointhmr", 32)])
def test_imphmr_and_pointhmr_checkpoints_run(setup, tmp_path, arch, head):
    smpl, root = setup
    torch.manual_seed(0)
    cfg = RegressorConfig(arch=arch, backbone="resnet18", num_rois=1, crop_hw=(64, 48), head_dim=head,
                          body_model="free")
    path = save_native(build_model(cfg).eval(), cfg, tmp_path / arch)
    r = runner.invoke(app, ["benchmark", "--dataset", "3dpw", "--data-root", str(root), "--smpl-dir", str(smpl),
                            "--checkpoint", str(path), "--limit", "2", "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["count"] == 2 and rep["num_rois"] == 1 and rep["overall"]["MPJPE"] > 0


# -- a network whose answer is known ---------------------------------------------------------
#: the constant network's pose: upright (SMPL +y up -> camera -y), left knee bent 40 deg about x,
#: right elbow 30 deg about z; and its betas
KNOWN_POSE = {0: np.diag([1.0, -1.0, -1.0]), 4: cv2.Rodrigues(np.array([0.7, 0.0, 0.0]))[0],
              19: cv2.Rodrigues(np.array([0.0, 0.0, 0.52]))[0]}
KNOWN_BETAS = np.array([0.8, -0.5, 0.3, 0.0, 0.2, 0.0, 0.0, -0.4, 0.0, 0.1])
H36M_TO_LSP14 = [6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10]


def _known_checkpoint(path):
    """A small Multi-RoI whose heads output nothing but their start values: KNOWN_POSE and
    KNOWN_BETAS, whatever the image."""
    rot = np.tile(np.eye(3), (24, 1, 1))
    for j, r in KNOWN_POSE.items():
        rot[j] = r
    path, _ = small_checkpoint(path, heads="constant", num_rois=2, pose=rot, betas=KNOWN_BETAS)
    return path, rot


def _similarity_align(x, y):
    """Umeyama: the similarity c R x + t (det R = +1) closest to y in least squares."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    u, d, vt = np.linalg.svd(yc.T @ xc / len(x))
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ sign @ vt
    c = np.trace(np.diag(d) @ sign) / (xc ** 2).sum(1).mean()
    return c * x @ r.T + (my - c * r @ mx)


def test_known_network_scores_what_the_protocol_says(setup, tmp_path):
    """The constant network's pose and betas (neutral model) against each person's ground truth
    (gendered model), scored here with numpy: SPIN's 14 LSP joints from the H36M regressor,
    pelvis-centred; PA after a similarity Procrustes; PVE over the vertices; mm."""
    smpl, root = setup
    path, rot = _known_checkpoint(tmp_path / "known")
    r = runner.invoke(app, ["benchmark", "--dataset", "3dpw", "--data-root", str(root), "--smpl-dir", str(smpl),
                            "--checkpoint", str(path), "--json", "--device", "cpu", "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)

    reg = np.load(smpl / "J_regressor_h36m.npy")
    models = {"neutral": make_fake_smpl(seed=0), "m": make_fake_smpl(seed=1), "f": make_fake_smpl(seed=2)}
    pred_v, _ = reference_lbs(models["neutral"], rot, KNOWN_BETAS)
    gt = np.load(root / "3dpw_test.npz")  # the same persons, SPIN-style (camera-frame pose)
    per = {m: [] for m in METRICS}
    seqs = []
    for pose, betas, gender, name in zip(gt["pose"], gt["shape"], gt["gender"], gt["imgname"]):
        gt_rot = np.stack([cv2.Rodrigues(pose[3 * k:3 * k + 3])[0] for k in range(24)])
        gt_v, _ = reference_lbs(models[str(gender)], gt_rot, betas)
        pj, gj = reg @ pred_v, reg @ gt_v
        p14, g14 = pj[H36M_TO_LSP14] - pj[0], gj[H36M_TO_LSP14] - gj[0]
        per["MPJPE"].append(1000 * np.linalg.norm(p14 - g14, axis=1).mean())
        per["PA-MPJPE"].append(1000 * np.linalg.norm(_similarity_align(p14, g14) - g14, axis=1).mean())
        per["PVE"].append(1000 * np.linalg.norm((pred_v - pj[0]) - (gt_v - gj[0]), axis=1).mean())
        seqs.append(str(name).split("/")[1])
    per = {m: np.array(v) for m, v in per.items()}
    seqs = np.array(seqs)
    assert rep["count"] == len(seqs) == 6 and (rep["num_rois"], rep["aggregation"]) == (2, "code")
    for m in METRICS:
        assert per[m].min() > 10  # a real error, not a 0 that anything would reproduce
        assert rep["overall"][m] == pytest.approx(per[m].mean(), abs=1e-3), m
        for seq in ("synthetic_seq_00", "synthetic_seq_01"):
            assert rep["sequences"][seq]["count"] == int((seqs == seq).sum())
            assert rep["sequences"][seq][m] == pytest.approx(per[m][seqs == seq].mean(), abs=1e-3), (seq, m)


def test_speed_mode():
    r = runner.invoke(app, ["benchmark", "--speed", "--rois", "1", "--batch-size", "1", "--repeats", "1",
                            "--same-process", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    (row,) = rep["results"]
    assert row["num_rois"] == 1 and row["network"]["persons_per_s"] > 0
    assert (row["backbone"], row["batch"], row["device"], row["precision"], row["body_model"]) == (
        "resnet50", 1, "cpu", "fp32", "free")
    for key in ("network", "network+body"):  # ms/person and persons/s describe the same time (2 decimals)
        assert row[key]["ms_per_person"] * row[key]["persons_per_s"] == pytest.approx(1000, rel=0.01), row
    # the Multi-RoI paper's Table 3 (fps, RTX 3090, batch 1, M = 1..5) is reported beside ours
    assert rep["paper_table3_fps_rtx3090_batch1"] == {"1": 76.3, "2": 63.5, "3": 61.7, "4": 57.3, "5": 55.6}
    assert rep["benchmark"] == "hmrcli.speed_regressor/1" and "random weights" in rep["note"]
    r = runner.invoke(app, ["benchmark", "--json"])
    assert r.exit_code == 2 and "give --dataset and --data-root (or --speed)" in r.output


def test_detector_boxes_matched_by_iou(setup, tmp_path):
    from hmrcli.bench.evaluate import box_iou

    assert np.allclose(box_iou(np.array([[0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6]]), np.array([0, 0, 2, 2])),
                       [1, 1 / 7, 0])
    smpl, root = setup
    torch.manual_seed(0)
    cfg = RegressorConfig(arch="multiroi", backbone="resnet50", num_rois=1)
    path = save_native(build_model(cfg).eval(), cfg, tmp_path / "rand1")
    r = runner.invoke(app, ["benchmark", "--dataset", "3dpw", "--data-root", str(root), "--smpl-dir", str(smpl),
                            "--checkpoint", str(path), "--limit", "2", "--boxes", "detect", "--detector", "whole-image",
                            "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["boxes"] == "detect" and rep["detection"]["matched"] == 2
    assert rep["detection"]["fallback_to_dataset_box"] == 0


def test_speed_end_to_end_on_images():
    samples = Path(__file__).resolve().parents[1] / "sample_images"
    r = runner.invoke(app, ["benchmark", "--speed", "--rois", "1", "--batch-size", "2", "--repeats", "1",
                            "--same-process", "--device", "cpu", "--detector", "whole-image",
                            "--images", str(samples), "--json"])
    assert r.exit_code == 0, r.output
    (e2e,) = json.loads(r.stdout)["end_to_end"]
    n = sum(1 for p in samples.iterdir() if p.suffix.lower() in (".png", ".jpg"))
    assert n >= 3 and e2e["images"] == n and e2e["persons"] == n and e2e["detector"] == "whole-image"
    assert all(v > 0 for v in e2e["seconds"].values()) and e2e["persons_per_s"] > 0
    assert set(e2e["seconds"]) == {"decode", "detect", "crop", "network+body"}
    total = sum(e2e["seconds"].values())  # (each rounded to 0.1 ms)
    assert e2e["ms_per_image"] == pytest.approx(1000 * total / n, rel=0.01, abs=0.1)
    assert e2e["persons_per_s"] == pytest.approx(n / total, rel=0.01)


def test_speed_matrix_precisions_modes_runtimes():
    """--speed over several batch sizes, precisions, modes and runtimes: one row per existing
    combination (onnx only fp32/eager), each with its settings, and M > 1 rows compared with
    M = 1 of the same configuration."""
    from hmrcli.bench.speed import configurations

    assert configurations(["fp32", "bf16"], ["eager", "compiled"], ["torch", "onnx"]) == [
        ("fp32", "eager", "torch"), ("fp32", "eager", "onnx"), ("fp32", "compiled", "torch"),
        ("bf16", "eager", "torch"), ("bf16", "compiled", "torch")]
    r = runner.invoke(app, ["benchmark", "--speed", "--rois", "1", "--rois", "2", "--batch-size", "1", "--batch-size", "2",
                            "--precision", "fp32", "--precision", "bf16", "--runtime", "torch", "--runtime", "onnx",
                            "--backbone", "resnet18", "--repeats", "1", "--same-process", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["results"]
    got = sorted((q["batch"], q["num_rois"], q["precision"], q["mode"], q["runtime"]) for q in rows)
    want = sorted((b, m, p, "eager", rt) for b in (1, 2) for m in (1, 2)
                  for p, rt in (("fp32", "torch"), ("fp32", "onnx"), ("bf16", "torch")))
    assert got == want
    for q in rows:
        assert "error" not in q and q["network"]["persons_per_s"] > 0, q
        if q["num_rois"] == 2:
            base = next(b for b in rows if b["num_rois"] == 1 and all(b[k] == q[k] for k in
                                                                     ("batch", "precision", "mode", "runtime")))
            assert q["cost_vs_m1"] == pytest.approx(q["network"]["ms_per_person"] / base["network"]["ms_per_person"],
                                                    abs=0.01)
    for bad, hint in ((["--precision", "int8"], "--precision"), (["--mode", "jit"], "--mode"),
                      (["--runtime", "trt"], "--runtime"), (["--runtime", "onnx", "--precision", "bf16"], "--runtime")):
        r = runner.invoke(app, ["benchmark", "--speed", "--rois", "1", "--device", "cpu", "--json", *bad])
        assert r.exit_code == 2 and hint in r.output, (bad, r.output)


def test_speed_end_to_end_pipeline_writes_files():
    """The real pipeline (files on disk -> meshes and JSON on disk), beside the stages, for
    torch and onnx."""
    samples = Path(__file__).resolve().parents[1] / "sample_images"
    r = runner.invoke(app, ["benchmark", "--speed", "--rois", "1", "--batch-size", "4", "--repeats", "1",
                            "--backbone", "resnet18", "--runtime", "torch", "--runtime", "onnx",
                            "--same-process", "--device", "cpu", "--detector", "whole-image",
                            "--images", str(samples), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["end_to_end"]
    n = sum(1 for p in samples.iterdir() if p.suffix.lower() in (".png", ".jpg"))
    assert [q["runtime"] for q in rows] == ["torch", "onnx"]
    for q in rows:
        pl = q["pipeline"]
        assert (pl["images_done"], pl["failed"], pl["persons"]) == (n, 0, n)
        # per image: result.json + per person a mesh and a camera JSON; the manifest and the run's files
        assert pl["files_written"] >= 3 * n
        assert pl["images_per_s"] == pytest.approx(n / pl["seconds"], rel=0.02)
        assert pl["persons_per_s"] == pytest.approx(n / pl["seconds"], rel=0.02)
