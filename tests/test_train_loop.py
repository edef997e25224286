"""The training loop, its configuration and ``hmrcli train`` (CPU, small): a few steps on a
tiny synthetic set reduce the loss; an interrupted run resumed from its checkpoint gives the
same next-step losses and weights as the uninterrupted run; initialisation from a
CLIFF-layout checkpoint loads what matches and reports what does not; checkpoints, training
state and the metric log have the documented content."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hmrcli.cli import app
from hmrcli.nn.checkpoints import RegressorConfig, build_model, load_checkpoint
from hmrcli.train.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_to_dict,
    example_toml,
    load_config,
)
from hmrcli.train.loop import (
    TrainError,
    TrainInterrupted,
    init_from_checkpoint,
    latest_state,
    lr_factor,
    train,
)

LAYOUTS = Path(__file__).resolve().parent / "data" / "checkpoint_layouts"
SMALL = ["model.backbone=resnet18", "model.crop_hw=64,48", "model.body_model=free", "device=cpu", "threads=1"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Twelve synthetic people (small images), split into train / test by image."""
    from hmrcli.train.synthetic import (
        SyntheticConfig,
        split_npz,
        write_synthetic_dataset,
    )

    root = tmp_path_factory.mktemp("synth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (the generator projects unused zero joints)
        s = write_synthetic_dataset(root, 12, seed=3, config=SyntheticConfig(image_wh=(256, 192), min_height=32))
    parts = split_npz(s["npz"], {"train": 0.75, "test": 0.25}, seed=0)
    return {"all": Path(s["npz"]), "train": parts["train"], "test": parts["test"]}


def _cfg(synth, out: Path, *extra: str) -> TrainConfig:
    return load_config(None, [f"data.train.0.path={synth['train']}", f"data.test.0.path={synth['test']}",
                              f"output={out}", "batch_size=4", "steps=4", "log_every=1", *SMALL, *extra])


def _losses(cfg: TrainConfig, resume: bool = False, stop_at: int | None = None) -> dict[int, float]:
    seen: dict[int, float] = {}

    def cb(ev):
        if ev["event"] == "step":
            seen[ev["step"]] = ev["losses"]["loss"]
            if stop_at is not None and ev["step"] == stop_at:
                raise KeyboardInterrupt

    train(cfg, resume=resume, progress=cb)
    return seen


# ------------------------------------------------------------------ training


def test_a_few_steps_reduce_the_loss(synth, tmp_path):
    # the whole (unaugmented) set in every batch: the loss must fall
    cfg = load_config(None, [f"data.train.0.path={synth['all']}", f"output={tmp_path / 'r'}", "batch_size=12",
                             "steps=8", "log_every=0", "checkpoint_every=0", "data.augment.enabled=false", *SMALL])
    losses = _losses(cfg)
    first, last = losses[1], losses[8]
    assert last < 0.75 * first, losses


def test_resume_gives_the_same_next_steps(synth, tmp_path):
    a = _cfg(synth, tmp_path / "a", "checkpoint_every=0")
    full = _losses(a)
    b = _cfg(synth, tmp_path / "b", "checkpoint_every=0")
    with pytest.raises(TrainInterrupted) as exc:
        _losses(b, stop_at=2)  # Ctrl-C after step 2: a checkpoint is saved at step 2
    assert exc.value.step == 2 and exc.value.checkpoint.is_file()
    assert latest_state(tmp_path / "b").name == "step_0000002.state.pt"
    resumed = _losses(b, resume=True)
    assert sorted(resumed) == [3, 4]
    assert resumed[3] == full[3] and resumed[4] == full[4]  # bitwise on CPU
    wa, _ = load_checkpoint(tmp_path / "a" / "model.safetensors")
    wb, _ = load_checkpoint(tmp_path / "b" / "model.safetensors")
    sa, sb = wa.state_dict(), wb.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the metric log of the resumed run continues where the first part stopped
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "train"]
    assert steps == [1, 2, 3, 4]


def test_outputs_checkpoints_state_and_log(synth, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(synth, out, "checkpoint_every=2", "keep_checkpoints=1", "losses.camera_form=paper")
    res = train(cfg)
    assert res.step == 4 and res.checkpoint == out / "model.safetensors"
    # native checkpoint: loads for inference, config and provenance recorded
    model, rc = load_checkpoint(res.checkpoint)
    assert (rc.arch, rc.backbone, rc.num_rois, tuple(rc.crop_hw), rc.body_model) == ("multiroi", "resnet18", 5,
                                                                                   (64, 48), "free")
    prov = rc.provenance
    assert prov["step"] == 4 and prov["train_config"]["losses"]["camera_form"] == "paper"
    assert prov["metrics"]["test"]["synthetic_test"]["count"] > 0
    assert set(prov["last_losses"]) >= {"loss", "kp2d", "kp3d", "vertices", "pose", "betas", "camera", "contrast"}
    # periodic checkpoints pruned to keep_checkpoints; the state loads with weights_only
    states = sorted(p.name for p in (out / "checkpoints").glob("*.state.pt"))
    assert states == ["step_0000004.state.pt"]
    st = torch.load(out / "checkpoints" / states[0], map_location="cpu", weights_only=True)
    assert st["step"] == 4 and st["weights"] == "step_0000004.safetensors"
    assert {"optimizer", "scheduler", "rng", "config", "metrics"} <= set(st)
    # metrics log: JSON lines with every loss term, the evaluation and the checkpoints
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["event"] == "train"]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and "camera" in r and "lr" in r for r in train_recs)
    ev = [r for r in recs if r["event"] == "eval"]
    assert ev and ev[-1]["test"]["synthetic_test"]["MPJPE"] > 0
    assert json.loads((out / "config.json").read_text())["model"]["backbone"] == "resnet18"
    # a second run into the same folder is refused unless resumed
    with pytest.raises(TrainError, match="--resume"):
        train(cfg)


def test_cliff_baseline_and_terms_switched_off(synth, tmp_path):
    cfg = _cfg(synth, tmp_path / "c", "model.arch=cliff", "model.num_rois=1", "losses.contrast=0", "steps=2",
               "checkpoint_every=0")
    seen = {}
    train(cfg, progress=lambda ev: seen.update(ev["losses"]) if ev["event"] == "step" else None)
    assert "contrast" not in seen and seen["camera"] == 0.0  # M = 1: nothing to be consistent with
    cfg = _cfg(synth, tmp_path / "d", "losses.camera=0", "losses.vertices=0", "steps=1")
    seen = {}
    train(cfg, progress=lambda ev: seen.update(ev["losses"]) if ev["event"] == "step" else None)
    assert "camera" not in seen and "vertices" not in seen and "contrast" in seen


def _fake_checkpoint(listing: str, path: Path) -> dict[str, torch.Tensor]:
    """Random tensors with the names and shapes of a released checkpoint's listing."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for line in (LAYOUTS / listing).read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        shape = tuple(int(s) for s in parts[1].strip("()").split(",") if s.strip())
        sd[parts[0]] = (torch.zeros(shape, dtype=torch.int64) if parts[0].endswith("num_batches_tracked")
                        else torch.randn(shape, generator=g))
    torch.save({"model": sd, "epoch": 3}, path)
    return sd


def test_init_from_cliff_layout_checkpoint(tmp_path):
    path = tmp_path / "res50-cliff.pt"
    sd = _fake_checkpoint("cliff_res50_keys.txt", path)
    # into the Multi-RoI ResNet-50: the backbone and the shared head parts load; the rest is reported
    model = build_model(RegressorConfig(arch="multiroi", backbone="resnet50", num_rois=5))
    rep = init_from_checkpoint(model, path)
    assert rep["layout"] == "cliff_res50" and not rep["unexpected"]
    mism = {k: (tuple(a), tuple(b)) for k, a, b in rep["shape_mismatch"]}
    assert mism["fc1.weight"] == ((1024, 2048 + 3 + 157), (2048, 2048 + 15 + 157))
    assert mism["fc2.weight"] == ((1024, 1024), (1024, 2048))
    assert any(k.startswith("fuse_fc.") for k in rep["missing"])
    assert any(k.startswith("proj_head.") for k in rep["missing"])
    own = model.state_dict()
    assert torch.equal(own["backbone.layer3.2.conv2.weight"], sd["encoder.layer3.2.conv2.weight"])
    assert torch.equal(own["decpose.weight"], sd["decpose.weight"])
    assert torch.equal(own["init_pose"], sd["init_pose"])
    assert rep["loaded"] == rep["total"] - len(rep["missing"]) - len(rep["shape_mismatch"])
    # into the CLIFF architecture itself: everything loads
    cliff = build_model(RegressorConfig(arch="cliff", backbone="resnet50", num_rois=1))
    rep = init_from_checkpoint(cliff, path)
    assert rep["loaded"] == rep["total"] and not rep["missing"] and not rep["shape_mismatch"]


def test_train_reports_init_mismatches(synth, tmp_path):
    """model.init through the loop (a CLIFF-layout file of a small CLIFF regressor)."""
    small = build_model(RegressorConfig(arch="cliff", backbone="resnet18", num_rois=1))
    sd = {(f"encoder.{k[len('backbone.'):]}" if k.startswith("backbone.") else k): v
          for k, v in small.state_dict().items()}
    path = tmp_path / "cliff_small.pt"
    torch.save({"model": sd}, path)
    cfg = _cfg(synth, tmp_path / "i", f"model.init={path}", "steps=1")
    events = []
    train(cfg, progress=events.append)
    rep = events[0]["init"]
    assert events[0]["event"] == "start" and rep["layout"] == "cliff_res50"
    assert {k for k, _, _ in rep["shape_mismatch"]} == {"fc1.weight", "fc1.bias", "fc2.weight"}
    assert rep["loaded"] > 100 and any(k.startswith("attention.") for k in rep["missing"])


# ------------------------------------------------------------------ configuration


def test_config_files_and_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(example_toml())
    cfg = load_config(toml, ["losses.contrast=0", "model.crop_hw=[128, 96]", "optim.betas=0.8,0.9",
                             "data.augment.enabled=off", "model.init=none", "data.train.0.ratio=2",
                             "data.train.2.path=more.npz", "steps=1_000"])
    assert cfg.losses.contrast == 0.0 and cfg.model.crop_hw == (128, 96) and cfg.optim.betas == (0.8, 0.9)
    assert cfg.data.augment.enabled is False and cfg.model.init is None and cfg.steps == 1000
    assert cfg.data.train[0].ratio == 2.0 and len(cfg.data.train) == 3
    assert cfg.data.train[0].path == str(tmp_path / "data" / "h36m_train.npz")  # relative to the file
    assert cfg.data.train[2].path == str(Path.cwd() / "more.npz")  # override: relative to the cwd
    # JSON round trip (what config.json holds)
    js = tmp_path / "c.json"
    js.write_text(json.dumps(config_to_dict(cfg)))
    assert config_to_dict(load_config(js)) == config_to_dict(cfg)
    # YAML when PyYAML is there
    yaml = pytest.importorskip("yaml")
    ym = tmp_path / "c.yaml"
    ym.write_text(yaml.safe_dump({"steps": 7, "losses": {"camera_form": "paper"}, "model": {"num_rois": 3}}))
    y = load_config(ym)
    assert (y.steps, y.losses.camera_form, y.model.num_rois) == (7, "paper", 3)


@pytest.mark.parametrize("override,match", [
    ("losses.contrst=0", "did you mean contrast"),
    ("steps=many", "integer"),
    ("precision=fp16", "fp32, bf16"),
    ("model.arch=cliff", "num_rois = 1"),
    ("model.backbone=vit", "unknown 'vit'"),
    ("losses.kp2d=-1", ">= 0"),
    ("nokey", "key=value"),
])
def test_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_lr_schedules():
    cfg = TrainConfig(steps=100)
    apply_overrides(cfg, ["schedule.name=cosine", "schedule.warmup_steps=10", "schedule.min_lr_ratio=0.1"])
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0) and lr_factor(100, cfg) == pytest.approx(0.1)
    assert lr_factor(55, cfg) == pytest.approx(0.55)
    apply_overrides(cfg, ["schedule.name=step", "schedule.warmup_steps=0", "schedule.step_size=30",
                          "schedule.gamma=0.5"])
    assert [lr_factor(s, cfg) for s in (0, 29, 30, 60)] == [1.0, 1.0, 0.5, 0.25]


# ------------------------------------------------------------------ CLI


def test_cli_train(synth, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--help"])
    assert r.exit_code == 0 and "--resume" in r.output and "--set" in r.output
    r = runner.invoke(app, ["train", "--example-config"])
    assert r.exit_code == 0 and "[[data.train]]" in r.output
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'batch_size = 4\nsteps = 2\n[model]\nbackbone = "resnet18"\ncrop_hw = [64, 48]\n'
                   f'body_model = "free"\n[[data.train]]\npath = "{synth["train"]}"\n')
    out = tmp_path / "cli_run"
    r = runner.invoke(app, ["train", "-c", str(cfg), "-o", str(out), "--set", "device=cpu", "--json", "-q"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["step"] == 2 and Path(res["checkpoint"]).is_file()
    # continue the same run for two more steps from its own config.json
    r = runner.invoke(app, ["train", "--resume", "-o", str(out), "--set", "steps=4", "--json", "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 4
    r = runner.invoke(app, ["train", "-c", str(cfg), "--set", "losses.contrst=0"])
    assert r.exit_code == 2 and "did you mean contrast" in r.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bf16 autocast)")
def test_bf16_on_cuda(synth, tmp_path):  # pragma: no cover - GPU machines only
    cfg = _cfg(synth, tmp_path / "g", "device=cuda", "precision=bf16", "steps=2")
    res = train(cfg)
    assert res.step == 2 and all(v == v for v in res.last_losses.values())


def test_data_loader_workers_give_the_same_training(synth, tmp_path):
    # data.num_workers > 0: items are built in worker processes, each seeded by its index, so the
    # batches -- and the losses and weights after the steps -- equal the in-process loader's
    base = ["checkpoint_every=0", "steps=2", "eval_every=0", "batch_size=2"]
    seen = {}
    for n in (0, 2):
        seen[n] = _losses(_cfg(synth, tmp_path / f"w{n}", f"data.num_workers={n}", *base))
    assert sorted(seen[2]) == [1, 2] and seen[2] == seen[0], seen
    w0, _ = load_checkpoint(tmp_path / "w0" / "model.safetensors")
    w2, _ = load_checkpoint(tmp_path / "w2" / "model.safetensors")
    s0, s2 = w0.state_dict(), w2.state_dict()
    assert all(torch.equal(s0[k], s2[k]) for k in s0)
    assert json.loads((tmp_path / "w2" / "config.json").read_text())["data"]["num_workers"] == 2


def test_cli_print_config(synth, tmp_path):
    runner = CliRunner()
    cfg = tmp_path / "t.toml"
    cfg.write_text('batch_size = 3\nsteps = 9\n[model]\nbackbone = "resnet18"\ncrop_hw = [64, 48]\n'
                   'num_rois = 2\n[losses]\ncontrast = 0.5\n[[data.train]]\npath = "d/train.npz"\nratio = 2\n')
    out = tmp_path / "never_written"
    r = runner.invoke(app, ["train", "-c", str(cfg), "-o", str(out), "--set", "steps=11", "--set",
                            "data.num_workers=3", "--print-config", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    # the file, the overrides (--set, -o) and every default, resolved; nothing is trained
    assert (got["batch_size"], got["steps"], got["output"]) == (3, 11, str(out))
    assert got["model"]["backbone"] == "resnet18" and got["model"]["crop_hw"] == [64, 48]
    assert got["model"]["num_rois"] == 2 and got["model"]["arch"] == "multiroi"
    assert got["losses"]["contrast"] == 0.5 and got["data"]["num_workers"] == 3
    (train_set,) = got["data"]["train"]
    assert train_set["path"] == str(tmp_path / "d" / "train.npz") and train_set["ratio"] == 2.0  # relative to the file
    assert got["precision"] == "fp32" and got["optim"]["name"] in ("adam", "adamw")
    assert not out.exists()
    # the same configuration without --json (pretty JSON for a terminal)
    r = runner.invoke(app, ["train", "-c", str(cfg), "-o", str(out), "--set", "steps=11", "--set",
                            "data.num_workers=3", "--print-config", "--no-json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == got
    # a bad override is refused before anything is printed
    r = runner.invoke(app, ["train", "-c", str(cfg), "--set", "steps=many", "--print-config"])
    assert r.exit_code == 2 and "integer" in r.output and r.stdout.strip() == ""
