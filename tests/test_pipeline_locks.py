"""Several processes sharing one output folder: per-image advisory locks
(hmrcli.pipeline.locks). An image locked by another process is left to it (skipped, with the
reason); one that another process finished during this run is not done twice; two identical
runs started together do every image exactly once between them."""

import json
import subprocess
import time

import cv2
import numpy as np
from _pipeline_helpers import (
    GATE_ENV,
    StubEngine,
    child_env,
    gated_hmrcli_cmd,
    shared_checkpoint,
)

from hmrcli.detect.whole_image import WholeImageDetector
from hmrcli.pipeline import InferOptions, run_inference
from hmrcli.pipeline.locks import LOCKS_DIR, ImageLocks, ManifestTail
from hmrcli.sources import expand_inputs


def _images(d, n):
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(d / f"img_{i:03d}.png"), np.full((24, 32, 3), 10 + 7 * i, np.uint8))
    return d


def _run(src, out, events):
    return run_inference(expand_inputs([str(src)]), StubEngine(), InferOptions(out=out, images_per_step=2),
                         progress=events.append, detector=WholeImageDetector())


def _image_lines(out):
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()
            if json.loads(x)["kind"] == "image"]


def test_an_image_locked_by_another_process_is_left_to_it(tmp_path):
    src, out = _images(tmp_path / "in", 4), tmp_path / "out"
    other = ImageLocks(out)  # stands for another process (flock locks belong to the open file)
    assert other.try_lock("img_001.png")
    events: list[dict] = []
    summ = _run(src, out, events)
    assert (summ.done, summ.skipped, summ.failed, summ.exit_code) == (3, 1, 0, 0)
    skipped = [e for e in events if e["event"] == "skipped"]
    assert [e["name"] for e in skipped] == ["img_001.png"]
    assert "another hmrcli process" in skipped[0]["reason"]
    assert not (out / "img_001.png" / "result.json").exists()
    assert sorted(x["name"] for x in _image_lines(out)) == ["img_000.png", "img_002.png", "img_003.png"]
    # this run released its own locks: the other process can take them; and once it lets go, a re-run does the rest
    assert other.try_lock("img_000.png")
    other.release_all()
    summ2 = _run(src, out, [])
    assert (summ2.done, summ2.skipped) == (1, 3)
    assert len(list((out / LOCKS_DIR).iterdir())) == 4  # one (empty) lock file per image, left in place


def test_manifest_tail_reads_new_whole_lines_only(tmp_path):
    man = tmp_path / "manifest.jsonl"
    man.write_text(json.dumps({"kind": "image", "name": "old.png", "settings_id": "s1"}) + "\n")
    tail = ManifestTail(man, man.stat().st_size)  # the plan was made here
    assert not tail.finished("old.png", "s1")  # before the plan: the plan's business
    with open(man, "a") as f:
        f.write(json.dumps({"kind": "image", "name": "a.png", "settings_id": "s1"}) + "\n")
        f.write("{torn\n")
        f.write(json.dumps({"kind": "image", "name": "b.png", "settings_id": "s2"}) + "\n")
        f.write(json.dumps({"kind": "image", "name": "c.png", "settings_id": "s1"}))  # still being written
    assert tail.finished("a.png", "s1")
    assert not tail.finished("b.png", "s1")  # other settings: redo
    assert not tail.finished("c.png", "s1")
    with open(man, "a") as f:
        f.write("\n")
    assert tail.finished("c.png", "s1")
    assert not ManifestTail(tmp_path / "missing.jsonl", 0).finished("a.png", "s1")


def test_an_image_another_process_finished_during_the_run_is_not_redone(tmp_path):
    """Another process records img_029 as finished (same settings) after this run made its
    plan and before this run reaches it: this run skips it, with the reason."""
    src, out = _images(tmp_path / "in", 30), tmp_path / "out"
    events: list[dict] = []

    def progress(ev):
        events.append(ev)
        if ev["event"] == "done" and ev["name"] == "img_000.png":
            lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
            sid = lines[0]["settings_id"]
            with open(out / "manifest.jsonl", "a") as f:
                f.write(json.dumps({"kind": "image", "name": "img_029.png", "settings_id": sid, "files": []}) + "\n")

    summ = run_inference(expand_inputs([str(src)]), StubEngine(), InferOptions(out=out, images_per_step=1,
                                                                                workers=0),
                         progress=progress, detector=WholeImageDetector())
    assert (summ.done, summ.skipped) == (29, 1)
    (skip,) = [e for e in events if e["event"] == "skipped"]
    assert skip["name"] == "img_029.png" and "finished it during this run" in skip["reason"]
    assert not (out / "img_029.png").exists()


def test_two_identical_runs_into_one_folder_do_each_image_once(tmp_path, tmp_path_factory):
    """Both runs make their plan (all 12 images to do) before either finishes an image: each
    engine is held on its first batch until both are held (or one has ended, finding every
    image locked by the other). Then the locks alone decide."""
    ckpt = shared_checkpoint(tmp_path_factory)
    src, out = _images(tmp_path / "in", 12), tmp_path / "out"
    cmd = gated_hmrcli_cmd("infer", str(src), "--out", str(out), "--checkpoint", str(ckpt), "--body-model", "free",
                           "--detector", "whole-image", "--json", "--batch-size", "1", free_calls=0)
    gates = [tmp_path / f"gate{i}" for i in range(2)]
    procs = []
    for g in gates:
        g.mkdir()
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**child_env(), GATE_ENV: str(g)}))
    try:
        t0 = time.monotonic()
        # each run is held on its first batch, or has ended (the other had locked every image)
        while not all((g / "blocked-1").exists() or p.poll() is not None for g, p in zip(gates, procs)):
            assert time.monotonic() - t0 < 120, "the runs did not reach their first batch"
            time.sleep(0.05)
        for g in gates:
            (g / "go").touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [e[-1500:] for _, e in outs]
    events = [[json.loads(x) for x in o.splitlines()] for o, _ in outs]
    sums = [ev[-1] for ev in events]
    lock_skips = [e for ev in events for e in ev if e.get("event") == "skipped"]
    assert sum(s["done"] for s in sums) == 12 and sum(s["skipped"] for s in sums) == 12
    assert len(lock_skips) == 12 and all("another hmrcli process" in e["reason"] for e in lock_skips)
    names = [x["name"] for x in _image_lines(out)]
    assert sorted(names) == sorted(f"img_{i:03d}.png" for i in range(12))  # each image exactly once
