"""A wheel (what `pip install .` builds) carries the model assets: installed outside the
source tree, hmrcli finds them in the package and runs `doctor` and `infer` with no
environment variables. (A fresh virtual environment with every dependency installed from
scratch is `make check-wheel`, which CI runs after the tests.)"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(d),
                        str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = d.glob("hmrcli-*.whl")
    target = d / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(whl)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return whl, target


def _run(target, code, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HMRCLI_")}
    env["PYTHONPATH"] = str(target)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def test_wheel_carries_every_model_file_with_its_licence(installed):
    whl, _ = installed
    names = set(zipfile.ZipFile(whl).namelist())
    for rel in (p.relative_to(ROOT).as_posix() for p in (ROOT / "models").rglob("*") if p.is_file()):
        assert f"hmrcli/{rel}" in names, rel
    assert "hmrcli/models/detect/LICENSES.md" in names and "hmrcli/models/pose_prior/README.md" in names


def test_installed_wheel_runs_doctor_and_infer(installed, tmp_path):
    _, target = installed
    code = (
        "import json, sys, hmrcli, hmrcli.assets as a\n"
        "assert hmrcli.__file__.startswith(%r), hmrcli.__file__  # the wheel, not the source tree\n"
        "print(json.dumps({'file': hmrcli.__file__, 'models': str(a.models_dir())}))\n"
        "from hmrcli.cli import main\n"
        "sys.argv = ['hmrcli', 'infer', %r, '--out', 'out', '--json', '--quiet']\n"
        "main()\n"
    ) % (str(target), str(ROOT / "sample_images" / "two_people_park.jpg"))
    r = _run(target, code, tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    first = json.loads(r.stdout.splitlines()[0])
    assert first["models"] == str(target / "hmrcli" / "models")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["done"] == 1 and summary["persons"] == 2, summary
    assert (tmp_path / "out" / "two_people_park.jpg" / "person_01.obj").is_file()
    doc = _run(target, "import sys; from hmrcli.cli import main; sys.argv = ['hmrcli', 'doctor', '--json']; main()", tmp_path)
    rep = json.loads(doc.stdout)
    assert rep["ok"] and rep["models_dir"] == str(target / "hmrcli" / "models"), doc.stdout[-2000:]
