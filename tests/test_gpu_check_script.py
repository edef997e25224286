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
                 "tests/test_geometry_crops.py::test_crops_on_cuda_match_cpu",
                 "tests/test_engine_device_crops.py::test_staging_on_cuda_changes_nothing",  # side-stream copies
                 "tests/test_sources_device_decode.py::test_nvjpeg_equals_opencv_within_decoder_tolerance"):
        assert want in found, (want, sorted(found))
    # only tests skipped without CUDA (not those that merely mention cuda, e.g. in a warning filter)
    assert not any("test_invalid_inputs_raise_value_error" in t or "saved_mmdet_checkpoint" in t for t in found)


def test_the_summary_reads_the_benchmark_output(tmp_path):
    """The script's summary step over real `hmrcli benchmark --speed` JSON (made here on the CPU
    with a small backbone, in the files the script writes): one row per configuration, the
    end-to-end pipeline figures, ok when everything passed."""
    text = SCRIPT.read_text()
    summary = re.search(r'START=\$START "\$PY" - <<\'EOF\'\n(.*?)\nEOF\n', text, re.S).group(1)
    samples = ROOT / "sample_images"
    base = [sys.executable, "-c", "import sys; from hmrcli.cli import main; sys.argv[0] = 'hmrcli'; main()", "benchmark", "--speed", "--device", "cpu", "--repeats", "1",
            "--same-process", "--json", "--backbone", "resnet18"]
    for name, extra in (("network", ["--rois", "1", "--rois", "2", "--batch-size", "1", "--batch-size", "2"]),
                        ("end_to_end", ["--rois", "1", "--batch-size", "2", "--detector", "whole-image",
                                        "--images", str(samples)])):
        r = subprocess.run(base + extra, capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert r.returncode == 0, r.stderr
        (tmp_path / f"speed_{name}.json").write_text(r.stdout)
    (tmp_path / "cuda_tests.txt").write_text("tests/test_x.py::test_a\n")
    (tmp_path / "tests.xml").write_text('<testsuites><testsuite><testcase classname="tests.test_x" name="test_a"/>'
                                        '</testsuite></testsuites>')
    env = dict(os.environ, DEVICE_JSON=json.dumps({"device_name": "test"}), TESTS_RC="0", BENCH_RC="0",
               DIR=str(tmp_path), START="0")
    r = subprocess.run([sys.executable, "-c", summary], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["tests"]["passed"] == 1
    rows = out["speed"]
    # (the end-to-end call measures its network configuration too)
    assert sorted((q["batch"], q["num_rois"]) for q in rows) == [(1, 1), (1, 2), (2, 1), (2, 1), (2, 2)]
    assert all(q["network_persons_per_s"] > 0 and q["runtime"] == "torch" for q in rows)
    assert all(q["cost_vs_m1"] > 0 for q in rows if q["num_rois"] == 2)
    (e2e,) = out["end_to_end"]
    assert e2e["pipeline"]["images_done"] == e2e["images"] > 0 and e2e["pipeline"]["images_per_s"] > 0
