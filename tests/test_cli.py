import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import hmrcli
from hmrcli.cli import app

runner = CliRunner()


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0
    assert r.output.strip() == f"hmrcli {hmrcli.__version__}"


def test_help_lists_doctor():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "doctor" in r.output


def test_doctor_json_reports_environment(fake_smpl_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HMRCLI_HOME", str(tmp_path))
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    (ck / "res50-PA45.7_MJE72.0_MVE85.3_3dpw.pt").write_bytes(b"x")
    r = runner.invoke(app, ["doctor", "--json", "--smpl-dir", str(fake_smpl_dir)])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["schema"] == "hmrcli.doctor/1"
    assert rep["hmrcli"] == hmrcli.__version__
    assert rep["torch"]["version"].split("+")[0] == __import__("torch").__version__.split("+")[0]
    assert rep["torch"]["default_device"] in ("cpu", "cuda", "mps")
    names = {p["name"]: p for p in rep["optional"]}
    assert {"mmdet", "mediapipe"} <= set(names)
    smpl = rep["body_models"]["smpl"]
    assert smpl["models"]["neutral"].endswith("basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl")
    assert smpl["models"]["male"].endswith("SMPL_MALE.pkl")
    assert smpl["models"]["female"] is None
    assert any("SMPL" in p["what"] and "female" in p["problem"] for p in rep["problems"])
    assert [Path(c["path"]).name for c in rep["checkpoints"]["found"]] == ["res50-PA45.7_MJE72.0_MVE85.3_3dpw.pt"]


def test_doctor_reports_the_free_body_model():
    rep = json.loads(runner.invoke(app, ["doctor", "--json"]).output)
    free = rep["body_models"]["free"]
    assert free["found"] and free["sha256_ok"] is True, free
    assert free["num_vertices"] > 6000
    assert rep["ok"] is True


def test_doctor_table_and_auto_json():
    r = runner.invoke(app, ["doctor", "--no-json"])
    assert r.exit_code == 0 and "Body models" in r.output
    # not a terminal -> JSON by default
    r = runner.invoke(app, ["doctor"])
    assert json.loads(r.output)["schema"] == "hmrcli.doctor/1"


def test_console_script_runs():
    exe = Path(sys.executable).parent / "hmrcli"
    assert exe.exists(), "the hmrcli console script is not installed in this environment"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "100"})
    assert out.stdout.strip() == f"hmrcli {hmrcli.__version__}"
