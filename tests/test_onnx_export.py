"""ONNX export of regressors (`hmrcli weights export-onnx`) and the onnxruntime-backed regressor
(`hmrcli infer --runtime onnx`, hmrcli.weights.onnx_regressor).

Small networks (ResNet-18, 64x48 crops, decoders at full gain so every output depends on the
input): parity onnxruntime vs torch for M = 5 (aggregation code) and M = 3 (exported with
--aggregation paper), batches of 1 and 3 from one graph; the config in the file's metadata;
`hmrcli infer --runtime onnx` against the torch runtime on a real photo; the refusals (not an
.onnx file, a corrupt one, an ONNX file without hmrcli's metadata, a failed export, a failed
parity check).

Tolerances, from what was measured (onnxruntime 1.26, torch 2.13, CPU): these graphs' outputs
differ by ~5e-6 (rotation matrices, betas and cameras alike); the worst seen over other
full-gain networks was 2.3e-5 (CLIFF, rotation matrices) and 6.5e-5 (ResNet-50 at 256x192,
cameras), so NET_TOL is 1e-4. In `hmrcli infer` the axis-angle body_pose
differs by up to ~1.2e-5 rad and the vertices, translation and camera JSON numbers by ~1e-6,
so OUT_TOL is 1e-4 (in each output's own unit).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import _probe as P
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from hmrcli.cli import app

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"
runner = CliRunner()

NET_TOL = 1e-4
OUT_TOL = 1e-4


def _checkpoint(path: Path, num_rois: int, seed: int = 0) -> Path:
    """A saved Multi-RoI (ResNet-18, 64x48 crops) with full-gain decoders (input-sensitive)."""
    from hmrcli.nn.checkpoints import build_model, save_native

    cfg = P.small_config(num_rois)
    cfg.box_rescale = 1.2  # not the default, so the metadata round trip shows it
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for lin in (model.decpose, model.decshape, model.deccam):
            nn.init.xavier_uniform_(lin.weight, gain=1.0)
    return save_native(model, cfg, path)


def _export(src: Path, dst: Path, *extra: str):
    r = runner.invoke(app, ["weights", "export-onnx", str(src), str(dst), "--json", *extra])
    return r


def _report(r) -> dict:
    return json.loads(r.stdout.strip().splitlines()[-1])


def _text(r) -> str:
    return " ".join(r.output.split())


@pytest.fixture(scope="module")
def m5(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx5")
    ckpt = _checkpoint(d / "m5", 5)
    r = _export(ckpt, d / "m5.onnx")
    assert r.exit_code == 0, r.output
    return SimpleNamespace(ckpt=ckpt, onnx=d / "m5.onnx", report=_report(r))


@pytest.fixture(scope="module")
def m3(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx3")
    ckpt = _checkpoint(d / "m3", 3, seed=1)
    r = _export(ckpt, d / "m3.onnx", "--aggregation", "paper")
    assert r.exit_code == 0, r.output
    return SimpleNamespace(ckpt=ckpt, onnx=d / "m3.onnx", report=_report(r))


def _inputs(num_rois: int, batch: int, seed: int):
    """Crops of real-looking pixel statistics and bbox_info from real-looking boxes."""
    from hmrcli.geometry import normalize_crops

    g = torch.Generator().manual_seed(seed)
    crops = normalize_crops(torch.randint(0, 256, (batch, num_rois, 3, 64, 48), generator=g, dtype=torch.uint8))
    info = torch.cat([(torch.rand(batch, num_rois, 2, generator=g) - 0.5) * 2.0,
                      torch.rand(batch, num_rois, 1, generator=g) * 25.0 - 2.0], -1)
    return crops.float(), info.float()


def _parity(ckpt: Path, onnx_path: Path, num_rois: int, aggregation: str | None = None) -> dict[str, float]:
    from hmrcli.weights import OnnxRegressor, load_regressor

    net = load_regressor(ckpt, aggregation=aggregation)
    ort_net = load_regressor(onnx_path, runtime="onnx")
    # what RegressionEngine does to a network: .to(device).eval().to(memory_format=...)
    assert isinstance(ort_net, OnnxRegressor)
    assert ort_net.to("cpu").eval().to(memory_format=torch.channels_last) is ort_net
    worst = {"person_rotmats": 0.0, "person_betas": 0.0, "cams": 0.0}
    for batch in (1, 3):  # one graph, two batch sizes
        crops, info = _inputs(num_rois, batch, seed=batch)
        with torch.no_grad():
            ref = net(crops, info)
        if batch == 3:  # crops in channels-last layout, as the engine makes on CUDA
            crops = crops.reshape(-1, 3, 64, 48).contiguous(memory_format=torch.channels_last).reshape(crops.shape)
        got = ort_net(crops, info)
        assert tuple(got.person_rotmats.shape) == (batch, 24, 3, 3)
        assert tuple(got.person_betas.shape) == (batch, 10)
        assert tuple(got.cams.shape) == (batch, num_rois, 3)
        for k in worst:
            worst[k] = max(worst[k], float((getattr(ref, k) - getattr(got, k)).abs().max()))
    return worst


def test_export_m5_parity_and_dynamic_batch(m5):
    rep = m5.report
    assert rep["num_rois"] == 5 and rep["crop_hw"] == [64, 48] and rep["parity_batches"] == [1, 3]
    assert max(rep["max_abs_diff"].values()) <= NET_TOL, rep
    worst = _parity(m5.ckpt, m5.onnx, 5)
    print("M=5 max abs diff onnxruntime vs torch:", worst)
    assert max(worst.values()) <= NET_TOL, worst


def test_export_m3_paper_aggregation_parity(m3):
    assert m3.report["num_rois"] == 3 and m3.report["aggregation"] == "paper"
    worst = _parity(m3.ckpt, m3.onnx, 3, aggregation="paper")
    print("M=3 (paper) max abs diff onnxruntime vs torch:", worst)
    assert max(worst.values()) <= NET_TOL, worst
    from hmrcli.nn.checkpoints import CheckpointError
    from hmrcli.weights import load_regressor

    with pytest.raises(CheckpointError, match="exported with aggregation 'paper'"):
        load_regressor(m3.onnx, runtime="onnx", aggregation="code")


def test_metadata_round_trip(m5):
    """The .onnx file alone carries the config: read back by onnx itself and by the runtime."""
    import onnx
    import onnxruntime as ort

    from hmrcli.nn.checkpoints import load_checkpoint
    from hmrcli.weights.onnx_regressor import (
        CONFIG_KEY,
        FORMAT,
        FORMAT_KEY,
        OnnxRegressor,
    )

    _, cfg = load_checkpoint(m5.ckpt)
    proto = onnx.load(str(m5.onnx), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props[FORMAT_KEY] == FORMAT
    stored = json.loads(props[CONFIG_KEY])
    want = cfg.to_json()
    for k in ("arch", "backbone", "num_rois", "crop_hw", "aspect", "aggregation", "n_iter", "box_rescale",
              "body_model", "schema"):
        assert stored[k] == want[k], k
    assert stored["box_rescale"] == 1.2
    assert stored["provenance"]["source_file"] == "m5.safetensors"
    assert stored["provenance"]["source_sha256"] == hashlib.sha256(m5.ckpt.read_bytes()).hexdigest()
    parity = json.loads(props["hmrcli.parity"])
    assert parity["batches"] == [1, 3] and max(parity["max_abs_diff"].values()) <= NET_TOL

    sess = ort.InferenceSession(str(m5.onnx), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    assert shapes["crops"][1:] == [5, 3, 64, 48] and shapes["bbox_info"][1:] == [5, 3]
    assert isinstance(shapes["crops"][0], str)  # the dynamic batch axis
    assert [o.name for o in sess.get_outputs()] == ["person_rotmats", "person_betas", "cams"]

    net = OnnxRegressor(m5.onnx)
    got = net.config
    for k in ("arch", "backbone", "num_rois", "crop_hw", "aspect", "aggregation", "box_rescale", "body_model"):
        assert getattr(got, k) == getattr(cfg, k), k
    assert got.provenance["source_file"] == "m5.onnx" and got.provenance["runtime"] == "onnx"
    assert got.provenance["exported_from"] == "m5.safetensors"
    assert net.providers == ["CPUExecutionProvider"]


def _infer(out: Path, checkpoint: Path, runtime: str, *extra: str):
    return runner.invoke(app, ["infer", str(SAMPLES / "grace_hopper.jpg"), "--engine", "regress", "--checkpoint",
                               str(checkpoint), "--runtime", runtime, "--detector", "whole-image", "--device", "cpu",
                               "--body-model", "free", "--out", str(out), "--json", "-q", *extra])


def _obj_vertices(path: Path) -> np.ndarray:
    return np.array([[float(v) for v in ln.split()[1:4]] for ln in path.read_text().splitlines() if ln.startswith("v ")])


def _numbers(a, b, where=""):
    """Every number of two JSON documents, paired; other values must be equal."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            yield from _numbers(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _numbers(x, y, f"{where}/{i}")
    elif isinstance(a, float) and not isinstance(a, bool):
        yield where, a, b
    else:
        assert a == b or where.endswith("/regressor/checkpoint"), (where, a, b)


def test_infer_onnx_runtime_matches_torch(m5, tmp_path):
    outs = {}
    for runtime, ckpt in (("torch", m5.ckpt), ("onnx", m5.onnx)):
        r = _infer(tmp_path / runtime, ckpt, runtime)
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout.strip().splitlines()[-1])["persons"] == 1
        outs[runtime] = tmp_path / runtime / "grace_hopper.jpg"
    a = np.load(outs["torch"] / "person_00.params.npz")
    b = np.load(outs["onnx"] / "person_00.params.npz")
    assert set(a.files) == set(b.files)
    diffs = {}
    for k in a.files:
        if a[k].dtype.kind in "fc":
            diffs[k] = float(np.abs(a[k] - b[k]).max())
        else:
            assert (a[k] == b[k]).all(), k
    va, vb = _obj_vertices(outs["torch"] / "person_00.obj"), _obj_vertices(outs["onnx"] / "person_00.obj")
    diffs["vertices"] = float(np.abs(va - vb).max())
    ca = json.loads((outs["torch"] / "person_00.camera.json").read_text())
    cb = json.loads((outs["onnx"] / "person_00.camera.json").read_text())
    # the ONNX graph outputs the person's pose only, not each RoI's: no joint spread in its quality block
    qa, qb = ca.pop("quality"), cb.pop("quality")
    assert qa["joint_spread_mm"]["overall"] is not None and qb["joint_spread_mm"]["overall"] is None and "note" in qb
    assert qa["camera_spread_pct"] == pytest.approx(qb["camera_spread_pct"], abs=0.01)
    assert (qa["truncated"], qa["visible_joints"]) == (qb["truncated"], qb["visible_joints"])
    diffs["camera.json"] = max(abs(x - y) for _, x, y in _numbers(ca, cb))
    print("infer torch vs onnx runtime, max abs diff:", diffs)
    assert max(diffs.values()) <= OUT_TOL, diffs
    assert cb["regressor"]["checkpoint"] == "m5.onnx" and ca["regressor"]["checkpoint"] != "m5.onnx"


def test_runtime_onnx_refuses_other_files(m5, tmp_path):
    r = _infer(tmp_path / "o1", m5.ckpt, "onnx")
    assert r.exit_code == 2 and "--runtime onnx needs an .onnx file made by" in _text(r), r.output
    assert "Traceback" not in r.output
    r = _infer(tmp_path / "o2", m5.onnx, "torch")
    assert r.exit_code == 2 and "run it with --runtime onnx" in _text(r), r.output
    r = _infer(tmp_path / "o3", m5.onnx, "tensorrt")
    assert r.exit_code == 2 and "--runtime" in r.output
    r = _infer(tmp_path / "o4", m5.onnx, "onnx", "--precision", "bf16")
    assert r.exit_code == 2 and "fp32 graph" in _text(r), r.output


def test_corrupt_and_foreign_onnx_files_fail_cleanly(m5, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf at all" * 100)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(m5.onnx.read_bytes()[: 1 << 20])
    foreign = ROOT / "models" / "detect" / "movenet_multipose_lightning.onnx"  # ONNX, but not a regressor
    for path, want in ((garbage, "not a readable ONNX file"), (truncated, "not a readable ONNX file"),
                       (foreign, "without hmrcli's regressor metadata")):
        r = _infer(tmp_path / f"o-{path.stem}", path, "onnx")
        assert r.exit_code == 2 and want in _text(r) and "Traceback" not in r.output, r.output
        v = runner.invoke(app, ["weights", "verify", str(path), "--json"])
        assert v.exit_code == 1, v.output
        rep = json.loads(v.stdout.strip().splitlines()[-1])
        assert rep["loads"] is False and want in rep["error"]


def test_verify_accepts_an_exported_file(m5):
    v = runner.invoke(app, ["weights", "verify", str(m5.onnx), "--json"])
    assert v.exit_code == 0, v.output
    rep = json.loads(v.stdout.strip().splitlines()[-1])
    assert rep["loads"] is True and rep["runtime"] == "onnx" and rep["num_rois"] == 5
    assert rep["backbone"] == "resnet18" and rep["exported_from"] == "m5.safetensors"


def test_engine_spec_runs_the_onnx_regressor(m5):
    from hmrcli.api import EngineSpec, make_engine
    from hmrcli.weights import OnnxRegressor

    eng, choice = EngineSpec(engine="regress", checkpoint=str(m5.onnx), body_model="free", device="cpu",
                             runtime="onnx").build()
    assert choice == "regress" and isinstance(eng.model, OnnxRegressor)
    assert eng.describe()["regressor"]["checkpoint"] == "m5.onnx"
    body = eng.body
    for kw, msg in ((dict(runtime="tflite"), "runtime must be one of"),
                    (dict(engine="fit", runtime="onnx"), "needs --engine regress"),
                    (dict(engine="regress", checkpoint=m5.onnx, runtime="onnx", precision="bf16"), "fp32 graph")):
        with pytest.raises(ValueError, match=msg):
            make_engine(body=body, **kw)


def test_export_refusals(m5, tmp_path, monkeypatch):
    # an existing output, a wrong suffix, an unusable checkpoint: nothing exported
    r = _export(m5.ckpt, m5.onnx)
    assert r.exit_code == 1 and "exists" in r.output
    r = _export(m5.ckpt, tmp_path / "x.bin")
    assert r.exit_code == 2 and "must end in .onnx" in r.output
    # an error stays one line, however long the path (logs are grepped for "error: <file>")
    long_out = tmp_path / ("y" * 120 + ".bin")
    r = _export(m5.ckpt, long_out)
    assert r.exit_code == 2 and f"error: {long_out}: the output must end in .onnx" in r.output.splitlines()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    r = _export(bad, tmp_path / "bad.onnx")
    assert r.exit_code == 2 and "cannot be loaded" in _text(r) and not (tmp_path / "bad.onnx").exists()
    r = _export(m5.onnx, tmp_path / "again.onnx")
    assert r.exit_code == 2 and "already an ONNX file" in _text(r)

    # the exporter fails: a clear error, exit 1, no file
    def boom(*a, **k):
        raise RuntimeError("unsupported operator aten::boom")

    monkeypatch.setattr(torch.onnx, "export", boom)
    r = _export(m5.ckpt, tmp_path / "boom.onnx")
    assert r.exit_code == 1 and "torch.onnx.export failed" in _text(r) and "aten::boom" in _text(r), r.output
    assert not (tmp_path / "boom.onnx").exists()

    # the graph does not compute what the network does (here: another network's graph): the
    # parity check refuses it and writes nothing
    import onnx

    proto = onnx.load(str(m5.onnx))
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: SimpleNamespace(model_proto=proto))
    other = _checkpoint(tmp_path / "other", 5, seed=7)
    r = _export(other, tmp_path / "other.onnx")
    assert r.exit_code == 1 and "parity check failed" in _text(r) and "nothing written" in _text(r), r.output
    assert not (tmp_path / "other.onnx").exists()


def test_cuda_without_a_cuda_provider_falls_back_to_the_cpu():
    import onnxruntime as ort

    from hmrcli.weights.onnx_regressor import execution_providers

    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert execution_providers("cuda:1")[-2:] == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    else:
        with pytest.warns(RuntimeWarning, match="no CUDA execution provider"):
            assert execution_providers("cuda") == ["CPUExecutionProvider"]
