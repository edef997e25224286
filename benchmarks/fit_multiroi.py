"""Does Multi-RoI help the landmark stage? Rendered synthetic people through BlazePose.

Random plausible bodies (free body model, hmrcli.bench.fit_synthetic) are rendered with the
project's renderer (grey shaded, untextured) over procedural backgrounds (colour noise +
gradients) in 1280x720 images, one person per image at 3-8 m. For each image BlazePose runs
on 1 RoI (one square crop around the true person box), on the 5 Multi-RoI crops (fused), and
on the 5 crops plus their mirror images (10 views fused, ``--mirror``, hmrcli's default), and
the body model is fitted to each landmark set. Reported (JSON on stdout): landmark
error against the true projected COCO keypoints (pixels, % of box height; BlazePose's
landmark definitions differ from the body model's keypoints, so this has a floor), persons
found, and the fit's PA-MPJPE / camera-distance error against the truth.

Usage: python benchmarks/fit_multiroi.py [--n 40] [--seed 0]
Needs the [fit] extra (mediapipe 0.10.21).
"""

import argparse
import json
import time

import numpy as np

from hmrcli import geometry as G
from hmrcli.bench.fit_synthetic import evaluate_fit, synthetic_people
from hmrcli.bench.synthetic import textured_background
from hmrcli.body import load_body_model
from hmrcli.fit.landmarks import Landmarker
from hmrcli.fit.optimize import FitTargets, KeypointBody, fit_bodies
from hmrcli.render import render


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    body = load_body_model("free")
    kb = KeypointBody(body)
    w, h = 1280, 720
    people = synthetic_people(body, a.n, rng, image_wh=(w, h), distance=(3.0, 8.0), noise2d=0.0, noise3d=0.0,
                              spread=0.4)
    images, boxes = [], []
    for i in range(a.n):
        v = people.vertices[i] + people.transl[i]
        out = render([(v, body.faces)], people.K, (w, h), background=textured_background(rng, w, h))
        images.append(out.rgb)
        uv = G.project(v, people.K)
        boxes.append(np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()]))
    found = {}
    report = {"benchmark": "fit_multiroi", "persons": a.n, "seed": a.seed, "image": [w, h], "distance_m": [3, 8]}
    configs = {"rois_1": (1, False), "rois_5": (5, False), "rois_5_mirror": (5, True)}
    for name, (m, mirror) in configs.items():
        lmk = Landmarker(num_rois=m, mirror=mirror)
        t0 = time.perf_counter()
        lms = [lmk(img, box) for img, box in zip(images, boxes)]
        t_lm = time.perf_counter() - t0
        lmk.close()
        found[name] = lms
        report[f"landmark_seconds_per_person_{name}"] = round(t_lm / a.n, 3)
    common = [i for i in range(a.n) if all(found[name][i] is not None for name in configs)]
    report["common_subset"] = len(common)
    for name, subset in [(c, None) for c in configs] + [(c, common) for c in configs]:
        lms = found[name]
        ok = [i for i, lm in enumerate(lms) if lm is not None] if subset is None else subset
        errs, rel = [], []
        for i in ok:
            vis = lms[i].conf2d >= 0.5
            e = np.linalg.norm(lms[i].kp2d - people.kp2d_true[i], axis=1)[vis]
            errs.append(e.mean())
            rel.append(e.mean() / (boxes[i][3] - boxes[i][1]))
        tg = FitTargets(np.stack([lms[i].kp2d for i in ok]), np.stack([lms[i].conf2d for i in ok]),
                        np.tile(people.K, (len(ok), 1, 1)), np.array([lms[i].rois[0, 2] for i in ok]),
                        np.stack([lms[i].kp3d for i in ok]), np.stack([lms[i].conf3d for i in ok]))
        fit = fit_bodies(kb, tg)
        import dataclasses

        sel = dataclasses.replace(people, joints=people.joints[ok], keypoints=people.keypoints[ok],
                                  distance=people.distance[ok])
        ev = evaluate_fit(body, sel, fit)
        report[name + ("_common" if subset is not None else "")] = {
            "found": len(ok),
            "landmark_err_px_mean": round(float(np.mean(errs)), 2),
            "landmark_err_box_pct_mean": round(100 * float(np.mean(rel)), 2),
            "landmark_err_box_pct_median": round(100 * float(np.median(rel)), 2),
            "fit_pa_mpjpe_mm_mean": round(float(ev["pa_mpjpe_mm"].mean()), 1),
            "fit_pa_mpjpe_mm_median": round(float(np.median(ev["pa_mpjpe_mm"])), 1),
            "fit_abs_distance_err_pct_mean": round(100 * float(np.abs(ev["distance_err"]).mean()), 1),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
