"""Throughput of `hmrcli infer` with the local executor and with `--executor ray`.

Runs the same command several times per executor, each into a fresh output folder (nothing
skipped), and prints JSON: per executor the median wall time of the whole process (start-up,
the Ray cluster's start included), the median `seconds` of the run's summary (from the plan to
the last image), and images/s over each. The machine it ran on is part of the output.

    .venv/bin/python benchmarks/executors.py                                   # sample_images/, 3 runs
    .venv/bin/python benchmarks/executors.py --images DIR --repeat 5 --ray-workers 2 -- --checkpoint X
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(images: str, executor: list[str], extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="hmrcli-exec-") as tmp:
        cmd = [sys.executable, "-c", "from hmrcli.cli import main; main()", "infer", images,
               "--out", str(Path(tmp) / "out"), "--json", "--quiet", *executor, *extra]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if r.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}")
        summ = json.loads(r.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "run_s": summ["seconds"], "images": summ["done"] + summ["failed"],
            "persons": summ["persons"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(ROOT / "sample_images"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ray-workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("extra", nargs="*", help="more `hmrcli infer` options (after --)")
    a = ap.parse_args()
    setups = {"local": [], f"ray x{a.ray_workers}": ["--executor", "ray", "--ray-workers", str(a.ray_workers),
                                                     "--cpus-per-worker", str(a.cpus_per_worker)]}
    out: dict = {"machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                             "python": platform.python_version()},
                 "images": a.images, "repeat": a.repeat, "extra": a.extra, "executors": {}}
    runs: dict[str, list[dict]] = {k: [] for k in setups}
    for _ in range(a.repeat):  # interleaved: a drifting machine affects both alike
        for name, args in setups.items():
            runs[name].append(run_once(a.images, args, a.extra))
    for name, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        run_s = statistics.median(r["run_s"] for r in rs)
        n = rs[0]["images"]
        out["executors"][name] = {"images": n, "persons": rs[0]["persons"], "wall_s_median": round(wall, 2),
                                  "run_s_median": round(run_s, 2), "images_per_s_wall": round(n / wall, 3),
                                  "images_per_s_run": round(n / run_s, 3),
                                  "wall_s_all": [round(r["wall_s"], 2) for r in rs]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
