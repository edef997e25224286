"""The code's layering and the absence of import cycles, as declared in pyproject.toml
([tool.importlinter]): checked with import-linter on every test run."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "2 kept, 0 broken" in r.stdout


def test_a_layer_violation_would_be_caught(tmp_path):
    """The contract really bites: geometry (the bottom layer) importing the pipeline breaks it."""
    cfg = (ROOT / "pyproject.toml").read_text()
    # a copy of the package with one upward import added
    import shutil

    pkg = tmp_path / "hmrcli"
    shutil.copytree(ROOT / "hmrcli", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "geometry" / "_upward.py").write_text("import hmrcli.pipeline  # noqa: F401\n")
    (tmp_path / "pyproject.toml").write_text(cfg)
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe), "--config", str(tmp_path / "pyproject.toml"), "--no-cache"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert r.returncode != 0 and "hmrcli.geometry._upward -> hmrcli.pipeline" in r.stdout, r.stdout[-3000:]
