"""``hmrcli benchmark`` end to end on the synthetic dataset (fake SMPL, synthetic regressor)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _fake_smpl import make_fake_smpl, write_chumpy_pickle
from hmrcli.bench.synthetic import write_synthetic_3dpw
from hmrcli.cli import app
from hmrcli.nn.checkpoints import RegressorConfig, build_model, save_native

runner = CliRunner()


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
    r = runner.invoke(app, ["benchmark", "--dataset", "3dpw", "--data-root", str(root), "--smpl-dir", str(tmp_path),
                            "--ground-truth-predictor", "--json"])
    assert r.exit_code == 2 and "J_regressor_h36m.npy" in r.output and "SMPL female" in r.output
    r = runner.invoke(app, ["benchmark", "--dataset", "h36m", "--data-root", str(tmp_path), "--smpl-dir", str(smpl),
                            "--ground-truth-predictor", "--json"])
    assert r.exit_code == 2 and "h36m_valid_protocol2.npz" in r.output
    r = runner.invoke(app, ["benchmark", "--dataset", "3dpw", "--data-root", str(root), "--json"])
    assert r.exit_code != 0


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
    assert rep["overall"]["MPJPE"] > 0 and rep["overall"]["PA-MPJPE"] <= rep["overall"]["MPJPE"] + 1e-9


def test_speed_mode():
    r = runner.invoke(app, ["benchmark", "--speed", "--rois", "1", "--batch-size", "1", "--repeats", "1",
                            "--same-process", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    (row,) = rep["results"]
    assert row["num_rois"] == 1 and row["network"]["persons_per_s"] > 0
    assert rep["paper_table3_fps_rtx3090_batch1"]["1"] == 76.3
    r = runner.invoke(app, ["benchmark", "--json"])
    assert r.exit_code != 0


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
