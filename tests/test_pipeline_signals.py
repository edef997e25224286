"""``hmrcli infer`` stopped by SIGTERM or killed with SIGKILL, then run again, gives the same
outputs as a run that was never interrupted (a subprocess on copies of a sample image, the
regression engine with a small constant checkpoint, the whole image as the person box).

Deterministic: the child's engine is gated (``_pipeline_helpers.install_engine_gate``): the
first batch (one image) runs, the second blocks until the test lets it go, so the signal
always arrives with exactly one image finished and fourteen left."""

import json
import shutil
import signal
import subprocess
import threading
import time

import pytest
from _pipeline_helpers import (
    GATE_ENV,
    ROOT,
    SAMPLES,
    child_env,
    gated_hmrcli_cmd,
    output_state,
    run_hmrcli,
    shared_checkpoint,
    summary_of,
)

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


def _start(args, out, gate, *extra):
    gate.mkdir()
    proc = subprocess.Popen(gated_hmrcli_cmd("infer", *args, "--out", str(out), *extra), cwd=ROOT,
                            env={**child_env(), GATE_ENV: str(gate)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    watchdog = threading.Timer(240, proc.kill)  # a hung child fails the test instead of hanging it
    watchdog.daemon = True
    watchdog.start()
    return proc


def _wait_until_blocked(proc, gate, timeout=120):
    """Until the engine holds before its second batch: the first image is finished."""
    t0 = time.monotonic()
    while not (gate / "blocked-2").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.005)


def _finished(out):
    return len(list(out.glob("*/result.json")))


def test_sigterm_stops_cleanly_then_rerun_completes(setup, tmp_path):
    args, reference = setup
    out = tmp_path / "out"
    gate = tmp_path / "gate"
    # --no-json with stdout and stderr not terminals: progress as JSON lines on stderr
    proc = _start(args, out, gate, "--no-json")
    _wait_until_blocked(proc, gate)
    assert _finished(out) == 1
    proc.send_signal(signal.SIGTERM)
    # the handler has run once it has said so on stderr; then the held batch may go on
    seen = []
    while not any(x.startswith("{") and json.loads(x).get("event") == "signal" for x in seen):
        line = proc.stderr.readline()
        assert line, "".join(seen)  # the child ended without reporting the signal
        seen.append(line)
    (gate / "go").touch()
    stdout, rest = proc.communicate(timeout=120)
    stderr = "".join(seen) + rest
    assert proc.returncode == 143, stderr
    assert stdout == ""
    log = [json.loads(x) for x in stderr.splitlines() if x.startswith("{")]
    summary = log[-1]
    assert summary["schema"] == "hmrcli.summary/1" and summary["command"] == "infer"
    assert summary["interrupted"] == "SIGTERM" and summary["exit_code"] == 143
    assert summary["done"] + summary["remaining"] == N_IMAGES and summary["remaining"] > 0
    # the batch being run when the signal came (the second image) is finished, nothing after it
    assert (summary["done"], summary["remaining"]) == (2, N_IMAGES - 2)
    assert not (gate / "blocked-3").exists()
    assert any(e.get("event") == "signal" and e["signal"] == "SIGTERM" for e in log)
    done = [e for e in log if e.get("event") == "done"]
    assert done and {"completed", "total", "images_per_s", "persons_per_s"} <= set(done[0])
    # finished images are complete, nothing else is there, no temp files
    assert _finished(out) == summary["done"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    for d in out.iterdir():
        if d.is_dir() and d.name != ".hmrcli-locks":  # (the per-image lock files: hmrcli.pipeline.locks)
            assert (d / "result.json").is_file()

    r = run_hmrcli("infer", *args, "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    s = summary_of(r.stdout)
    assert s["skipped"] == summary["done"] and s["done"] == summary["remaining"]
    assert output_state(out) == reference


def test_kill_9_then_rerun_gives_the_same_outputs(setup, tmp_path):
    args, reference = setup
    out = tmp_path / "out"
    gate = tmp_path / "gate"
    proc = _start(args, out, gate, "--json")
    _wait_until_blocked(proc, gate)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    at_kill = _finished(out)
    assert at_kill < N_IMAGES, "the run finished before it was killed: nothing was tested"
    assert at_kill == 1  # killed while the engine held the second image

    r = run_hmrcli("infer", *args, "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    s = summary_of(r.stdout)
    assert s["done"] + s["skipped"] == N_IMAGES and s["failed"] == 0
    assert s["skipped"] >= at_kill - 1  # at most the image being finished at the kill is redone
    assert (s["skipped"], s["done"]) == (1, N_IMAGES - 1)  # killed between images: none is redone
    assert output_state(out) == reference
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
