"""Checkpoint JSON configs are validated field by field (issue 19, item 5): one clear error naming
the file and the field, for `infer` and `weights verify`; a non-finite estimate writes no mesh."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hmrcli.cli import app
from hmrcli.nn.checkpoints import CheckpointError, load_checkpoint

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"
runner = CliRunner()


def _copy_with(tmp_path, ckpt, **changes):
    src = Path(ckpt)
    dst = tmp_path / "bad.safetensors"
    shutil.copy(src, dst)
    cfg = json.loads(src.with_suffix(".json").read_text())
    cfg.update(changes)
    dst.with_suffix(".json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("field, value, want", [
    ("box_rescale", float("nan"), "box_rescale must be a finite number"),
    ("box_rescale", 1e308, "box_rescale must be a finite number"),
    ("n_iter", 10 ** 12, "n_iter must be an integer 1..10"),
    ("crop_hw", [10 ** 6, 10 ** 6], "crop_hw must be two integers 32..1024"),
    ("crop_hw", "256x192", "crop_hw must be two integers"),
    ("backbone", "vit_huge", "backbone must be one of"),
    ("num_rois", 10 ** 9, "num_rois must be an integer 1..5"),
    ("arch", "transformer", "arch must be multiroi or cliff"),
    ("aggregation", "max", "aggregation must be code or paper"),
])
def test_bad_fields_are_named(tmp_path, constant_checkpoint, field, value, want):
    bad = _copy_with(tmp_path, constant_checkpoint, **{field: value})
    with pytest.raises(CheckpointError, match=want) as e:
        load_checkpoint(bad)
    assert str(bad.with_suffix(".json")) in str(e.value)
    r = runner.invoke(app, ["infer", str(SAMPLES / "astronaut.png"), "--checkpoint", str(bad), "--out",
                            str(tmp_path / "o"), "--detector", "whole-image"])
    assert r.exit_code == 2 and want in " ".join(r.output.split()) and "Traceback" not in r.output
    v = runner.invoke(app, ["weights", "verify", str(bad), "--json"])
    rep = json.loads(v.stdout.strip().splitlines()[-1])
    assert rep["loads"] is False and want in rep["error"]


def test_malformed_and_non_object_configs(tmp_path, constant_checkpoint):
    bad = _copy_with(tmp_path, constant_checkpoint)
    bad.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(bad)
    bad.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must be a JSON object"):
        load_checkpoint(bad)


def test_non_finite_estimate_is_a_recorded_failure(tmp_path, constant_checkpoint, monkeypatch):
    import numpy as np

    from hmrcli.engine.regress import RegressionEngine

    real = RegressionEngine.run

    def nan_run(self, prepared, **kw):
        out = real(self, prepared, **kw)
        out[0][0].cam_t = np.full(3, np.nan)
        return out

    monkeypatch.setattr(RegressionEngine, "run", nan_run)
    out = tmp_path / "o"
    r = runner.invoke(app, ["infer", str(SAMPLES / "astronaut.png"), "--checkpoint", str(constant_checkpoint),
                            "--out", str(out), "--detector", "whole-image", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "astronaut.png" / "result.json").read_text())
    assert res["persons"] == 0 and "not finite" in res["problems"][0]
    assert not list((out / "astronaut.png").glob("person_*"))
    assert json.loads(r.stdout.strip().splitlines()[-1])["persons_failed"] == 1
