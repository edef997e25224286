"""benchmarks/gpu_check.sh without a GPU: it parses, says clearly that there is no CUDA device
and exits 2 without running anything, and its test finder picks the CUDA-marked tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_the_script_parses():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.access(SCRIPT, os.X_OK)


def test_without_a_cuda_device_it_says_so_and_fails(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", GPU_CHECK_DIR=str(tmp_path / "check"))
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "no CUDA device" in r.stderr
    assert json.loads(r.stdout) == {"ok": False, "error": "no CUDA device"}
    assert not (tmp_path / "check").exists()  # nothing was run


def test_the_test_finder_picks_the_cuda_marked_tests():
    text = SCRIPT.read_text()
    finder = re.search(r'"\$PY" - > "\$DIR/cuda_tests.txt" <<\'EOF\'\n(.*?)\nEOF\n', text, re.S).group(1)
    r = subprocess.run([sys.executable, "-c", finder], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    found = set(r.stdout.split())
    for want in ("tests/test_engine_device_crops.py::test_engine_on_cuda_defaults_and_matches_cpu",  # regressor
                 "tests/test_engine_device_crops.py::test_crop_batch_on_cuda_matches_cpu",
                 "tests/test_render.py::test_cuda_matches_cpu",  # renderer
                 "tests/test_fit_optimize.py::test_fit_on_cuda_matches_cpu",  # fit
                 "tests/test_detect_mmdet.py::test_cuda_matches_cpu",  # detector
                 "tests/test_train_loop.py::test_bf16_on_cuda",  # training step in bf16
                 "tests/test_geometry_crops.py::test_crops_on_cuda_match_cpu"):
        assert want in found, (want, sorted(found))
    # only tests skipped without CUDA (not those that merely mention cuda, e.g. in a warning filter)
    assert not any("test_invalid_inputs_raise_value_error" in t or "saved_mmdet_checkpoint" in t for t in found)
