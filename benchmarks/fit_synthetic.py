"""The fitting engine's synthetic check with figures (JSON on stdout).

Random plausible bodies (free body model) at 3-10 m, COCO-17 keypoints observed with 2 px
(2D) and 2 cm (3D) noise (hmrcli.bench.fit_synthetic); the batched fit; PA-MPJPE (24 joints and
17 keypoints), camera-distance error, reprojection error and seconds per person for
several batch sizes. Usage: python benchmarks/fit_synthetic.py [--n 64] [--seed 0] [--threads 2]
"""

import argparse
import json
import platform
import time

import numpy as np
import torch

from hmrcli.bench.fit_synthetic import evaluate_fit, synthetic_people
from hmrcli.body import load_body_model
from hmrcli.fit.optimize import KeypointBody, fit_bodies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    body = load_body_model("free")
    kb = KeypointBody(body, device=a.device)
    people = synthetic_people(body, a.n, np.random.default_rng(a.seed))
    fit_bodies(kb, synthetic_people(body, 2, np.random.default_rng(99)).targets, device=a.device)  # warm-up
    t0 = time.perf_counter()
    fit = fit_bodies(kb, people.targets, device=a.device)
    total = time.perf_counter() - t0
    ev = evaluate_fit(body, people, fit)
    speed = {}
    for bs in (1, 8, 32):
        sub = synthetic_people(body, bs, np.random.default_rng(a.seed + 1))
        t0 = time.perf_counter()
        fit_bodies(kb, sub.targets, device=a.device)
        speed[str(bs)] = round((time.perf_counter() - t0) / bs, 4)
    q = lambda x: {"mean": round(float(np.mean(x)), 2), "median": round(float(np.median(x)), 2),
                   "max": round(float(np.max(x)), 2)}
    print(json.dumps({
        "benchmark": "fit_synthetic", "bodies": a.n, "seed": a.seed, "body_model": "free",
        "noise": {"2d_px": 2.0, "3d_m": 0.02}, "distance_m": [3, 10], "image": [1920, 1080],
        "pa_mpjpe_24_joints_mm": q(ev["pa_mpjpe_mm"]), "pa_mpjpe_17_keypoints_mm": q(ev["pa_kp_mm"]),
        "abs_distance_error_pct": q(100 * np.abs(ev["distance_err"])),
        "within_40mm": int((ev["pa_mpjpe_mm"] <= 40).sum()), "within_10pct": int((np.abs(ev["distance_err"]) <= 0.1).sum()),
        "reproj_px": q(ev["reproj_px"]),
        "seconds_per_person_batch": round(total / a.n, 4), "seconds_per_person_by_batch_size": speed,
        "device": a.device, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
    }, indent=1))


if __name__ == "__main__":
    main()
