"""Person detection on real photos with hand-counted people: recall, false positives, time.

Reads the hand-made ground truth ``tests/data/people_photos.json`` (every clearly visible
person's box, plus ``ignore`` boxes for people below the counting rule) and runs detectors
on ``sample_images/``. A ground-truth person is found when a detection overlaps its box by
IoU >= 0.5 (greedy, best score first); a detection matching an ``ignore`` box counts neither
way; every other detection is a false positive. Prints JSON (per photo and overall, per
detector), with the machine it ran on.

    .venv/bin/python benchmarks/detect_people.py                       # the mediapipe detector
    .venv/bin/python benchmarks/detect_people.py --detector mediapipe --detector movenet --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from hmrcli.geometry import box_iou_xyxy

ROOT = Path(__file__).resolve().parents[1]


def match(dets: list[tuple[np.ndarray, float]], persons: list[list[float]], ignore: list[list[float]],
          thr: float = 0.5) -> dict:
    """Greedy matching by score: (true positives, false positives, misses, ignored)."""
    free = list(range(len(persons)))
    tp = fp = ign = 0
    for box, _ in sorted(dets, key=lambda d: -(d[1] or 0.0)):
        best, bi = 0.0, -1
        for k in free:
            v = box_iou_xyxy(box, persons[k])
            if v > best:
                best, bi = v, k
        if best >= thr:
            free.remove(bi)
            tp += 1
        elif any(box_iou_xyxy(box, g) >= thr for g in ignore):
            ign += 1
        else:
            fp += 1
    return {"persons": len(persons), "found": tp, "missed": len(free), "false_positives": fp, "ignored": ign}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", action="append", help="detector name(s) (default: mediapipe)")
    ap.add_argument("--truth", default=str(ROOT / "tests/data/people_photos.json"))
    ap.add_argument("--images", default=str(ROOT / "sample_images"))
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per image (the first call, which builds "
                    "the models, is not timed)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="detector option, e.g. --set min_height=60 (numbers parsed as float)")
    args = ap.parse_args(argv)
    from hmrcli.detect import create_detector
    from hmrcli.sources import read_image

    truth = json.loads(Path(args.truth).read_text())["photos"]
    opts = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        try:
            opts[k] = float(v)
        except ValueError:
            opts[k] = v
    out = {"schema": "hmrcli.bench.detect/1", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
           "processor": platform.processor()}, "truth": os.path.relpath(args.truth, ROOT), "iou": 0.5,
           "detectors": {}}
    for name in args.detector or ["mediapipe"]:
        det = create_detector(name, **opts)
        rows, tot = {}, {"persons": 0, "found": 0, "missed": 0, "false_positives": 0, "ignored": 0}
        times = []
        for photo, gt in sorted(truth.items()):
            img = read_image(Path(args.images) / photo)
            det.detect([img])  # warm-up (graph build on the first image)
            ts = []
            for _ in range(max(1, args.repeat)):
                t = time.perf_counter()
                res = det.detect([img])[0]
                ts.append(time.perf_counter() - t)
            dets = [(np.asarray(d.box_xyxy, dtype=float), d.score) for d in res]
            m = match(dets, [p["box_xyxy"] for p in gt["persons"]], [g["box_xyxy"] for g in gt.get("ignore", [])])
            m["ms"] = round(1000 * float(np.median(ts)), 1)
            m["boxes"] = [[round(float(v), 1) for v in b] + [round(float(s or 0), 3)] for b, s in dets]
            rows[photo] = m
            times.append(m["ms"])
            for k in tot:
                tot[k] += m[k]
        tot["recall"] = round(tot["found"] / max(tot["persons"], 1), 3)
        tot["precision"] = round(tot["found"] / max(tot["found"] + tot["false_positives"], 1), 3)
        tot["ms_per_image_median"] = round(float(np.median(times)), 1)
        tot["ms_per_image_mean"] = round(float(np.mean(times)), 1)
        out["detectors"][name] = {"label": getattr(det, "detector_label", name), "options": opts,
                                  "overall": tot, "photos": rows}
        if hasattr(det, "close"):
            det.close()
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
