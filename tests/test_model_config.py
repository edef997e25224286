"""The network's fields are declared once (ArchitectureConfig, hmrcli.nn.checkpoints): a
checkpoint's RegressorConfig and training's ModelConfig both extend it, training builds its
checkpoint config from it, and the configuration files, ``train --print-config`` and the
checkpoint JSON keep their form."""

import dataclasses
import json
import re

import pytest
from typer.testing import CliRunner

from hmrcli.cli import app
from hmrcli.nn.checkpoints import (
    AGGREGATIONS,
    ARCHS,
    ASPECTS,
    ArchitectureConfig,
    RegressorConfig,
)
from hmrcli.train import config as train_config
from hmrcli.train.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    config_to_dict,
    load_config,
)

ARCH_FIELDS = ["arch", "backbone", "num_rois", "crop_hw", "aspect", "aggregation", "n_iter", "head_dim"]

#: ``train --print-config``'s model section (as before the two configs shared their fields, plus
#: ``head_dim``, which came with ImpHMR and PointHMR)
MODEL_SECTION = [("arch", "multiroi"), ("backbone", "resnet50"), ("num_rois", 5), ("crop_hw", [256, 192]),
                 ("aspect", "rect"), ("aggregation", "code"), ("n_iter", 3), ("head_dim", 0), ("init", None),
                 ("mean_params", None),
                 ("body_model", "auto"), ("smpl_dir", None)]


def test_one_declaration_of_the_network_fields():
    assert [f.name for f in dataclasses.fields(ArchitectureConfig)] == ARCH_FIELDS
    for cls, own in ((ModelConfig, {"init", "mean_params", "body_model", "smpl_dir"}),
                     (RegressorConfig, {"box_rescale", "body_model", "format_version", "provenance"})):
        assert issubclass(cls, ArchitectureConfig)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(ArchitectureConfig):  # inherited, not re-declared
            assert fields[f.name] is f, (cls, f.name)
        assert set(fields) - set(ARCH_FIELDS) == own
    assert "arch" not in ModelConfig.__annotations__ and "arch" not in RegressorConfig.__annotations__
    assert ModelConfig().architecture() == RegressorConfig().architecture()
    assert train_config._CHOICES["model.arch"] is ARCHS and train_config._CHOICES["model.aspect"] is ASPECTS
    assert train_config._CHOICES["model.aggregation"] is AGGREGATIONS


def test_print_config_and_files_keep_their_form(tmp_path):
    assert list(config_to_dict(TrainConfig())["model"].items()) == MODEL_SECTION
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\narch = "cliff"\nnum_rois = 1\ncrop_hw = [128, 96]\ninit = "x.pt"\n'
                   '[losses]\ncontrast = 0.0\n')
    r = CliRunner().invoke(app, ["train", "-c", str(cfg), "--set", "model.n_iter=2", "--print-config", "--json"])
    assert r.exit_code == 0, r.output
    model = json.loads(r.stdout)["model"]
    want = dict(MODEL_SECTION, arch="cliff", num_rois=1, crop_hw=[128, 96], n_iter=2, init=str(tmp_path / "x.pt"))
    assert list(model.items()) == list(want.items())


def test_checkpoint_config_from_the_training_config():
    m = load_config(None, ["model.arch=cliff", "model.num_rois=1", "losses.contrast=0", "model.crop_hw=128,96",
                           "model.n_iter=2", "model.aggregation=paper", "model.backbone=resnet18"]).model
    r = m.regressor_config("free")
    assert type(r) is RegressorConfig and r.architecture() == m.architecture() and r.body_model == "free"
    assert r.crop_hw == (128, 96) and r.box_rescale == RegressorConfig().box_rescale and r.provenance == {}
    assert RegressorConfig.from_json(json.loads(json.dumps(r.to_json())), "r.json") == r
    m.crop_hw = [256, 192]  # a list set by hand: the checkpoint config holds a tuple
    assert m.regressor_config("smpl").crop_hw == (256, 192)


def test_checkpoint_json_of_before_still_loads():
    old = {"arch": "multiroi", "backbone": "resnet50", "num_rois": 5, "crop_hw": [256, 192], "aspect": "rect",
           "box_rescale": 1.1, "body_model": "smpl", "aggregation": "code", "n_iter": 3, "format_version": 1,
           "provenance": {"layout": "mroi_res50"}, "schema": "hmrcli.regressor/1"}
    cfg = RegressorConfig.from_json(old, "old.json")
    assert cfg.to_json() == old and cfg.architecture()["crop_hw"] == (256, 192)
    assert cfg.head_dim == 0  # (written only when it is not the default: old files keep their form)
    assert RegressorConfig(arch="imphmr", num_rois=1, head_dim=32).to_json()["head_dim"] == 32


@pytest.mark.parametrize("override,want", [
    ("model.n_iter=20", "model: n_iter must be an integer 1..10, got 20"),
    ("model.crop_hw=2048,1536", "model: crop_hw must be two integers 32..1024"),
    # the training messages of before stay
    ("model.arch=cliff", "set model.num_rois = 1"),
    ("model.num_rois=7", "model.num_rois must be 1..5"),
    ("model.aspect=wide", "model.aspect: must be one of rect, square"),
])
def test_training_refuses_what_a_checkpoint_config_refuses(override, want):
    """A network that training would build but whose checkpoint would not load is refused up
    front (before, n_iter = 20 trained, then its checkpoints failed to load)."""
    with pytest.raises(ConfigError, match=re.escape(want)):
        load_config(None, [override, "losses.contrast=0"] if "cliff" in override else [override])
