"""Does the per-person quality score rank meshes by their actual error? (JSON on stdout)

Synthetic renders with known truth (hmrcli.bench.quality_check: the free body model rendered
by hmrcli's renderer over procedural backgrounds, 1280x720, a quarter each clean, occluded by
random boxes, truncated at a border, both), run through an engine; per engine: Spearman's
rank correlation between 1 - score and the person's PA-MPJPE (24 joints, mm), the mean error
of the best 50 % / 80 % of persons by score against all, the same correlation for each
single measure, and per corruption the mean error and score.

Usage:
    python benchmarks/quality_check.py [--n 200] [--seed 0] [--engines fit] [--threads 2]
    python benchmarks/quality_check.py --engines fit,regress --checkpoint runs/synth/model.safetensors

The fit engine needs the [fit] extra (BlazePose). The regression engine needs a trained
checkpoint (--checkpoint); none can be downloaded here (README: Regressor checkpoints).
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hmrcli.bench.quality_check import evaluate, make_scenes, summarise, timed  # noqa: E402
from hmrcli.body import load_body_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="persons (one per image)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engines", default="fit", help="comma-separated: fit, regress")
    ap.add_argument("--checkpoint", default=None, help="regressor checkpoint for --engines regress")
    ap.add_argument("--rois", type=int, default=5, help="fit engine: BlazePose RoIs per person")
    ap.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                    help="fit engine: BlazePose also on each RoI's crop flipped left-right (hmrcli's default)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--rows", action="store_true", help="also print every person's row (corruption, error, quality)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    if "regress" in engines and not a.checkpoint:
        sys.exit("error: --engines regress needs --checkpoint (a trained regressor; none ships with hmrcli)")
    body = load_body_model("free")
    t0 = time.perf_counter()
    scenes, t_scenes = timed(lambda: make_scenes(body, a.n, a.seed))
    report = {"benchmark": "quality_check", "persons": a.n, "seed": a.seed, "image": [1280, 720],
              "distance_m": [4, 10], "body_model": "free",
              "corruptions": {c: sum(s.corruption == c for s in scenes) for c in
                              ("clean", "occluded", "truncated", "occluded+truncated")},
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                         f"{torch.get_num_threads()} threads",
              "render_seconds": round(t_scenes, 1)}
    for name in engines:
        if name == "fit":
            from hmrcli.engine.fit import FitEngine

            eng = FitEngine(body, num_rois=a.rois, batch_size=8, mirror=a.mirror)
        elif name == "regress":
            from hmrcli.engine.regress import RegressionEngine
            from hmrcli.weights.catalogue import load_regressor

            eng = RegressionEngine(load_regressor(a.checkpoint), body, batch_size=16)
        else:
            sys.exit(f"error: unknown engine {name!r}: use fit, regress")
        rows, secs = timed(lambda: evaluate(eng, scenes))
        if hasattr(eng, "close"):
            eng.close()
        sec = summarise(rows, name, secs)
        if name == "regress":
            sec["checkpoint"] = a.checkpoint
        if name == "fit":
            sec["rois"] = a.rois
            sec["mirror"] = a.mirror
        if a.rows:
            sec["rows"] = [{k: v for k, v in r.items()} for r in rows]
        report[name] = sec
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


if __name__ == "__main__":
    main()
