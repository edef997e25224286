"""``hmrcli infer`` stopped by SIGTERM or killed with SIGKILL, then run again, gives the same
outputs as a run that was never interrupted (a subprocess on copies of a sample image, the
regression engine with a small constant checkpoint, the whole image as the person box)."""

import json
import shutil
import signal
import subprocess
import time

import pytest

from _pipeline_helpers import (ROOT, SAMPLES, child_env, hmrcli_cmd, output_state, run_hmrcli, shared_checkpoint,
                               summary_of)

N_IMAGES = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("signals")
    ckpt = shared_checkpoint(tmp_path_factory)
    photos = base / "photos"
    photos.mkdir()
    for i in range(N_IMAGES):
        shutil.copy(SAMPLES / "astronaut.png", photos / f"copy {i:02d}.png")
    args = [str(photos), "--checkpoint", str(ckpt), "--detector", "whole-image", "--body-model", "free", "-b", "1"]
    ref = base / "reference"
    r = run_hmrcli("infer", *args, "--out", str(ref), "--json")
    assert r.returncode == 0, r.stderr
    assert summary_of(r.stdout)["done"] == N_IMAGES
    return args, output_state(ref)


def _start(args, out, *extra):
    return subprocess.Popen(hmrcli_cmd("infer", *args, "--out", str(out), *extra), cwd=ROOT, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_first_result(proc, out, timeout=120):
    t0 = time.monotonic()
    while not list(out.glob("*/result.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.005)


def _finished(out):
    return len(list(out.glob("*/result.json")))


def test_sigterm_stops_cleanly_then_rerun_completes(setup, tmp_path):
    args, reference = setup
    out = tmp_path / "out"
    # --no-json with stdout and stderr not terminals: progress as JSON lines on stderr
    proc = _start(args, out, "--no-json")
    _wait_for_first_result(proc, out)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stdout == ""
    log = [json.loads(x) for x in stderr.splitlines() if x.startswith("{")]
    summary = log[-1]
    assert summary["schema"] == "hmrcli.summary/1" and summary["command"] == "infer"
    assert summary["interrupted"] == "SIGTERM" and summary["exit_code"] == 143
    assert summary["done"] + summary["remaining"] == N_IMAGES and summary["remaining"] > 0
    assert any(e.get("event") == "signal" and e["signal"] == "SIGTERM" for e in log)
    done = [e for e in log if e.get("event") == "done"]
    assert done and {"completed", "total", "images_per_s", "persons_per_s"} <= set(done[0])
    # finished images are complete, nothing else is there, no temp files
    assert _finished(out) == summary["done"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    for d in out.iterdir():
        if d.is_dir():
            assert (d / "result.json").is_file()

    r = run_hmrcli("infer", *args, "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    s = summary_of(r.stdout)
    assert s["skipped"] == summary["done"] and s["done"] == summary["remaining"]
    assert output_state(out) == reference


def test_kill_9_then_rerun_gives_the_same_outputs(setup, tmp_path):
    args, reference = setup
    out = tmp_path / "out"
    proc = _start(args, out, "--json")
    _wait_for_first_result(proc, out)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    at_kill = _finished(out)
    assert at_kill < N_IMAGES, "the run finished before it was killed: nothing was tested"

    r = run_hmrcli("infer", *args, "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    s = summary_of(r.stdout)
    assert s["done"] + s["skipped"] == N_IMAGES and s["failed"] == 0
    assert s["skipped"] >= at_kill - 1  # at most the image being finished at the kill is redone
    assert output_state(out) == reference
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
