"""Memory stays flat over a folder of 2,000 images: run_inference in a subprocess (the real
loader: decoding threads, detector, bounded queues, writers and manifest; a cheap stand-in
engine whose prepared images each hold 256 KiB, so prepared images piling up would show),
peak RSS read from /proc at several points."""

import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
from _pipeline_helpers import ROOT, child_env

N = 2000

CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[3])
    from pathlib import Path
    from _pipeline_helpers import StubEngine
    from hmrcli.detect import create_detector
    from hmrcli.pipeline import InferOptions, run_inference
    from hmrcli.sources import expand_inputs

    def status():
        out = {}
        for line in open("/proc/self/status"):
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
        return out

    marks = {}

    def progress(ev):
        if ev["event"] == "done":
            progress.n += 1
            if progress.n in (100, 500, 1000, 1500, 2000):
                marks[progress.n] = status()
    progress.n = 0

    def run(sources, out, progress=None):
        return run_inference(sources, StubEngine(batch_size=16, prep_bytes=256 << 10),
                             InferOptions(out=Path(out), images_per_step=8, workers=2),
                             progress=progress, detector=create_detector("whole-image"))

    sources = expand_inputs([sys.argv[1]])
    run(sources[:50], sys.argv[2] + "-warmup")  # lazy imports, thread arenas
    marks[0] = status()
    s = run(sources, sys.argv[2], progress)
    print(json.dumps({"summary": s.to_json(), "marks": marks}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_rss_stays_flat_over_2000_images(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N):
        cv2.imwrite(str(d / f"{i:05d}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", CHILD, str(d), str(out), str(ROOT / "tests")], capture_output=True,
                       text=True, timeout=600, env=child_env())
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["summary"]["done"] == N and res["summary"]["failed"] == 0
    marks = {int(k): v for k, v in res["marks"].items()}
    mb = {k: round(v["VmHWM"] / 2**20, 1) for k, v in sorted(marks.items())}
    print("peak RSS (MiB) after n images:", mb)
    # whole run (after a warm-up run): prepared images piling up (2,000 x 256 KiB) would show here
    assert marks[N]["VmHWM"] - marks[0]["VmHWM"] < 100 * 2**20, mb
    # and nothing grows with the number of images done
    assert marks[N]["VmHWM"] - marks[500]["VmHWM"] < 20 * 2**20, mb
    assert marks[N]["VmRSS"] - marks[500]["VmRSS"] < 100 * 2**20, mb
    assert len(list(out.glob("*/result.json"))) == N
