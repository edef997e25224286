#!/usr/bin/env python
"""Mesh overlay speed: seconds per ``render_overlay`` of the free body model (13,718 vertices,
27,420 faces) over a photo-sized image, with the person filling a good part of the frame.

Prints one JSON object: median and min seconds per overlay over --repeats timed runs (after
one warm-up run), the device, the number of CPU threads torch uses, and the fraction of the
image the person covers.

    python benchmarks/render_speed.py [--size 1024] [--repeats 7] [--device cpu|cuda]
        [--threads N] [--people 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from hmrcli.body import load_body_model
from hmrcli.render import render, render_overlay


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="image width = height, pixels")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--people", type=int, default=1, help="number of bodies side by side")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    body = load_body_model("free")
    pose = torch.zeros(1, 24, 3, dtype=torch.float64)
    pose[0, 16, 2] = -1.1  # arms lowered from the T-pose (A-pose): a compact, typical silhouette
    pose[0, 17, 2] = 1.1
    verts = body(pose).vertices[0]
    faces = body.faces
    size = a.size
    f = 1.2 * size
    # Body ~1.65 m tall filling ~85 % of the image height, facing the camera.
    z = f * 1.65 / (0.85 * size)
    K = np.array([[f, 0.0, (size - 1) / 2], [0.0, f, (size - 1) / 2], [0.0, 0.0, 1.0]])
    R = np.diag([1.0, -1.0, -1.0])  # body +Y up / +Z front -> camera y down, facing the camera
    spacing = 0.7
    meshes = [
        (verts + torch.tensor([(i - (a.people - 1) / 2) * spacing, 0.0, 0.4 * (i % 2)], dtype=torch.float64), faces)
        for i in range(a.people)
    ]
    t = np.array([0.0, 0.05, z])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)

    out = render(meshes, K, (size, size), R=R, t=t, device=a.device)  # warm-up + coverage
    times = []
    for _ in range(a.repeats):
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        render_overlay(image, meshes, K, R=R, t=t, alpha=0.8, device=a.device)
        times.append(time.perf_counter() - t0)

    dev = a.device
    name = (
        torch.cuda.get_device_name(0)
        if dev.startswith("cuda")
        else f"{platform.processor() or platform.machine()} CPU"
    )
    print(json.dumps({
        "benchmark": "hmrcli.render_speed/1",
        "seconds_per_overlay_median": round(statistics.median(times), 4),
        "seconds_per_overlay_min": round(min(times), 4),
        "repeats": a.repeats,
        "image_wh": [size, size],
        "people": a.people,
        "num_vertices": int(verts.shape[0]) * a.people,
        "num_faces": int(faces.shape[0]) * a.people,
        "mask_fraction": round(float((out.mask >= 0).mean()), 4),
        "device": dev,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
