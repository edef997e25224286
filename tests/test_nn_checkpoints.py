"""Checkpoint layouts: authors' Multi-RoI files, CLIFF's files, hmrcli's native format."""

import json
import pickle
from pathlib import Path

import pytest
import torch

from hmrcli.nn.checkpoints import (
    CheckpointError,
    RegressorConfig,
    build_model,
    detect_layout,
    load_checkpoint,
    read_state_dict,
    save_native,
)

LAYOUTS = Path(__file__).resolve().parent / "data" / "checkpoint_layouts"
LAYOUT_FILES = {
    "mroi_res50": "mroi_res50_hmr_sim_keys.txt",
    "mroi_hr48": "mroi_hr48_hmr_sim_hrnet_keys.txt",
    "cliff_res50": "cliff_res50_keys.txt",
    "cliff_hr48": "cliff_hr48_keys.txt",
}
CONFIGS = {
    "mroi_res50": RegressorConfig(arch="multiroi", backbone="resnet50", num_rois=5),
    "mroi_hr48": RegressorConfig(arch="multiroi", backbone="hrnet_w48_pose", num_rois=5),
    "cliff_res50": RegressorConfig(arch="cliff", backbone="resnet50", num_rois=1),
    "cliff_hr48": RegressorConfig(arch="cliff", backbone="hrnet_w48_cls", num_rois=1),
}


def _listing(layout):
    out = {}
    for line in (LAYOUTS / LAYOUT_FILES[layout]).read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            out[parts[0]] = tuple(int(x) for x in parts[1].strip("()").split(",") if x.strip())
    return out


def _to_layout(native, layout):
    """The inverse of hmrcli's renaming: native names -> the authors'/CLIFF's names."""
    if layout == "mroi_res50":
        return {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in native.items()}
    if layout.startswith("cliff"):
        return {"encoder." + k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in native.items()}
    return dict(native)


def _randomised(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            r = torch.randn(v.shape, generator=g) * 0.02
            if k.endswith("running_var"):
                r = r.abs() + 0.5
            sd[k] = r
        else:
            sd[k] = v.clone()
    model.load_state_dict(sd)
    return model.eval()


_MODELS = {}


def _model(layout):
    if layout not in _MODELS:
        torch.manual_seed(0)
        _MODELS[layout] = _randomised(build_model(CONFIGS[layout]))
    return _MODELS[layout]


@pytest.mark.parametrize("layout", list(LAYOUT_FILES))
def test_model_reproduces_the_published_layout(layout):
    theirs = _to_layout({k: tuple(v.shape) for k, v in _model(layout).state_dict().items()}, layout)
    assert theirs == _listing(layout)


@pytest.mark.parametrize("layout", ["mroi_res50", "cliff_res50", "mroi_hr48", "cliff_hr48"])
def test_foreign_files_load_and_match_native(layout, tmp_path):
    model = _model(layout)
    theirs = _to_layout(model.state_dict(), layout)
    if layout.startswith("cliff"):
        theirs = {f"module.{k}": v for k, v in theirs.items()}  # DataParallel prefix, as released
        blob = {"model": theirs, "epoch": 7}
    else:
        blob = {"model": theirs, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "epoch": 12}
    path = tmp_path / f"{layout}.pt"
    torch.save(blob, path)
    assert detect_layout(read_state_dict(path)[0]) == layout
    loaded, cfg = load_checkpoint(path)
    assert cfg.provenance["layout"] == layout and cfg.arch == CONFIGS[layout].arch
    assert cfg.num_rois == CONFIGS[layout].num_rois
    native_path = save_native(loaded, cfg, tmp_path / "native" / layout)
    assert json.loads(native_path.with_suffix(".json").read_text())["schema"] == "hmrcli.regressor/1"
    again, cfg2 = load_checkpoint(native_path)
    assert cfg2 == cfg
    ref = model.state_dict()
    for net in (loaded, again):
        got = net.state_dict()
        assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    if "hr48" in layout:
        return  # outputs are compared on the ResNet layouts (HRNet-W48 forwards are slow on CPU)
    m = cfg.num_rois
    g = torch.Generator().manual_seed(1)
    crops = torch.randn(2, m, 3, 256, 192, generator=g)
    info = torch.randn(2, m, 3, generator=g) * 0.3
    with torch.no_grad():
        a = loaded(crops, info)
        b = again(crops, info)
        c = model(crops, info)
    for x, y in ((a, b), (a, c)):
        torch.testing.assert_close(x.rotmats, y.rotmats, atol=0, rtol=0)
        torch.testing.assert_close(x.betas, y.betas, atol=0, rtol=0)
        torch.testing.assert_close(x.cams, y.cams, atol=0, rtol=0)


def test_wrong_files_give_one_clear_error(tmp_path):
    model = _model("mroi_res50")
    sd = _to_layout(model.state_dict(), "mroi_res50")
    # missing and unexpected keys
    broken = dict(sd)
    broken.pop("fc1.weight")
    broken["extra.thing"] = torch.zeros(1)
    p = tmp_path / "broken.pt"
    torch.save({"model": broken}, p)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert str(p) in msg and "mroi_res50" in msg and "fc1.weight" in msg and "extra.thing" in msg
    # truncated
    good = tmp_path / "good.pt"
    torch.save({"model": sd}, good)
    data = good.read_bytes()
    trunc = tmp_path / "truncated.pt"
    trunc.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(trunc)
    # not a checkpoint at all
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, world")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk)
    # unrecognised layout
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_checkpoint(other)
    # native weights without their config
    nat = save_native(model, RegressorConfig(), tmp_path / "nat")
    nat.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="JSON config"):
        load_checkpoint(nat)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_that_run_code_are_refused(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"model": {"w": torch.zeros(1)}, "x": _Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(p)
    assert "must never run" not in capsys.readouterr().out


def test_load_regressor_by_path_and_registry_name(tmp_path, monkeypatch):
    import hmrcli
    from hmrcli.weights.catalogue import known_checkpoints

    monkeypatch.setenv("HMRCLI_CHECKPOINT_DIR", str(tmp_path))
    entry = known_checkpoints()["cliff-res50"]
    with pytest.raises(CheckpointError) as e:
        hmrcli.load_regressor("cliff-res50")
    assert entry["filename"] in str(e.value) and str(tmp_path) in str(e.value) and "noah-research" in str(e.value)
    with pytest.raises(CheckpointError, match="not a known checkpoint"):
        hmrcli.load_regressor("no-such-model")
    model = _model("cliff_res50")
    torch.save({"model": _to_layout(model.state_dict(), "cliff_res50")}, tmp_path / entry["filename"])
    net = hmrcli.load_regressor("cliff-res50")
    assert not net.training and net.config.arch == "cliff" and net.config.backbone == "resnet50"
    net2 = hmrcli.load_regressor(tmp_path / entry["filename"], aggregation="code")
    torch.testing.assert_close(net2.state_dict()["fc1.weight"], model.state_dict()["fc1.weight"])


def test_mean_params(tmp_path):
    import numpy as np

    from hmrcli.nn.mean_params import load_mean_params

    mp = load_mean_params()
    assert mp["pose"].shape == (144,) and mp["shape"].abs().sum() == 0
    torch.testing.assert_close(mp["cam"], torch.tensor([0.9, 0.0, 0.0]))
    m = build_model(RegressorConfig(arch="cliff"), mean_params=mp)
    torch.testing.assert_close(m.init_pose[0], mp["pose"])
    spin_like = tmp_path / "smpl_mean_params.npz"
    np.savez(spin_like, pose=np.arange(144.0), shape=np.ones(10), cam=np.array([1.0, 0.1, 0.2]))
    assert load_mean_params(spin_like)["shape"].sum() == 10
    np.savez(spin_like, pose=np.arange(10.0), shape=np.ones(10), cam=np.ones(3))
    with pytest.raises(ValueError, match="144"):
        load_mean_params(spin_like)


def test_cli_weights_convert(tmp_path):
    from typer.testing import CliRunner

    from hmrcli.cli import app

    model = _model("mroi_res50")
    src = tmp_path / "mroi_epoch12.pt"
    torch.save({"model": _to_layout(model.state_dict(), "mroi_res50"), "epoch": 12}, src)
    runner = CliRunner()
    r = runner.invoke(app, ["weights", "convert", str(src), str(tmp_path / "out" / "mroi")])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)
    assert rec["layout"] == "mroi_res50" and rec["num_rois"] == 5
    cfg = json.loads((tmp_path / "out" / "mroi.json").read_text())
    assert cfg["provenance"]["source_file"] == "mroi_epoch12.pt" and len(cfg["provenance"]["source_sha256"]) == 64
    net, _ = load_checkpoint(tmp_path / "out" / "mroi.safetensors")
    torch.testing.assert_close(net.state_dict()["fuse_fc.weight"], model.state_dict()["fuse_fc.weight"])
    r = runner.invoke(app, ["weights", "convert", str(src), str(tmp_path / "out" / "mroi")])
    assert r.exit_code == 1 and "exists" in r.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 10)
    r = runner.invoke(app, ["weights", "convert", str(bad), str(tmp_path / "o2")])
    assert r.exit_code == 2 and "bad.pt" in r.output


def _registry_copy(tmp_path, monkeypatch, entries):
    """A models/ folder whose registry lists ``entries`` (other assets copied)."""
    import shutil

    from hmrcli import assets

    models = tmp_path / "models"
    shutil.copytree(assets.models_dir(), models)
    reg = json.loads((models / "registry.json").read_text())
    reg["checkpoints"].update(entries)
    (models / "registry.json").write_text(json.dumps(reg))
    monkeypatch.setenv("HMRCLI_MODELS_DIR", str(models))
    monkeypatch.setenv("HMRCLI_CHECKPOINT_DIR", str(tmp_path / "ckpts"))


def test_fetch_and_verify(tmp_path, monkeypatch):
    import hashlib

    from typer.testing import CliRunner

    from hmrcli.cli import app
    from hmrcli.weights.catalogue import FetchError, fetch_checkpoint, verify_checkpoint

    served = tmp_path / "served" / "model.pt"
    served.parent.mkdir()
    torch.save({"model": _to_layout(_model("cliff_res50").state_dict(), "cliff_res50")}, served)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    base = {"layout": "cliff_res50", "arch": "cliff", "backbone": "resnet50", "num_rois": 1, "source": "the test",
            "licence": "test", "published": None}
    _registry_copy(tmp_path, monkeypatch, {
        "good": {**base, "filename": "good.pt", "url": served.as_uri(), "sha256": digest},
        "tampered": {**base, "filename": "tampered.pt", "url": served.as_uri(), "sha256": "0" * 64},
        "offline": {**base, "filename": "offline.pt", "url": "http://127.0.0.1:9/offline.pt", "sha256": None},
        "manual": {**base, "filename": "manual.pt", "url": None, "sha256": None},
    })
    path = fetch_checkpoint("good")
    assert path == tmp_path / "ckpts" / "good.pt" and path.read_bytes() == served.read_bytes()
    with pytest.raises(FetchError, match="expected 0000"):
        fetch_checkpoint("tampered")
    assert not (tmp_path / "ckpts" / "tampered.pt").exists()
    with pytest.raises(FetchError, match=r"cannot download .*by hand .*offline.pt"):
        fetch_checkpoint("offline", timeout=2)
    with pytest.raises(FetchError, match="no direct download URL"):
        fetch_checkpoint("manual")
    assert not [p for p in (tmp_path / "ckpts").iterdir() if p.name.endswith(".part")]
    rep = verify_checkpoint("good")
    assert rep["ok"] and rep["sha256_ok"] and rep["layout"] == "cliff_res50"
    (tmp_path / "ckpts" / "good.pt").write_bytes(b"garbage")
    rep = verify_checkpoint("good")
    assert not rep["ok"] and rep["sha256_ok"] is False and not rep["loads"]
    runner = CliRunner()
    r = runner.invoke(app, ["weights", "verify", "good", "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["sha256_ok"] is False
    r = runner.invoke(app, ["weights", "fetch", "manual"])
    assert r.exit_code == 1 and "by hand" in r.output
    r = runner.invoke(app, ["weights", "fetch", "good", "--overwrite"])
    assert r.exit_code == 0 and json.loads(r.output)["path"].endswith("good.pt")
    assert runner.invoke(app, ["weights", "verify", "good"]).exit_code == 0
