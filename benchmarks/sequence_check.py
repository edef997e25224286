"""Tracking and smoothing on a rendered sequence with known answers (JSON on stdout).

Two free-model bodies walk across a 960x540 picture in opposite directions, 4.5 m and 6.5 m
from the camera, and pass each other half-way (hmrcli.bench.sequence: 60 frames at 30 fps,
rendered with hmrcli's renderer over a static background, frames named frame_0.png ..
frame_59.png so only a natural sort orders them). `hmrcli infer --sequence` runs on the
folder as a user would (the fitting engine: BlazePose landmarks + per-frame fit; the default
detector, MoveNet), then the saved frames are tracked once and smoothed with each method.
Reported per method, against the truth, per person and averaged: identity switches, MPJPE
(pelvis-aligned, 24 joints, mm), acceleration error (pelvis-aligned and in the camera
frame, mm / frame^2, the mean |a_est - a_true| over joints and frames whose neighbours are
both present), and the change against the per-frame estimates.

Usage: python benchmarks/sequence_check.py [--work DIR] [--frames 60] [--seed 0] [--min-track-frames 3]
(a re-run with the same --work reuses the rendered frames and skips the finished frames;
needs the [fit] extra for BlazePose.)
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hmrcli.api import make_engine  # noqa: E402
from hmrcli.bench.sequence import render_frames, sequence_metrics, walking_pair  # noqa: E402
from hmrcli.body import load_body_model  # noqa: E402
from hmrcli.detect import create_detector  # noqa: E402
from hmrcli.fit.optimize import KeypointBody  # noqa: E402
from hmrcli.pipeline import InferOptions, run_inference  # noqa: E402
from hmrcli.pipeline.sequence import (  # noqa: E402
    SequenceOptions,
    find_sequences,
    read_sequence_observations,
)
from hmrcli.sources import expand_inputs  # noqa: E402
from hmrcli.track import SmoothOptions, TrackerOptions, smooth_track, track_people  # noqa: E402


def summarise(m: dict) -> dict:
    ps = [p for p in m["persons"] if p.get("track")]
    mean = lambda k: round(float(np.mean([p[k] for p in ps])), 2) if ps else None
    return {"identity_switches": m["identity_switches"], "tracks": m["tracks"],
            "matched_person_frames": m["matched_person_frames"], "person_frames": m["person_frames"],
            "mpjpe_mm": mean("mpjpe_mm"), "accel_err_mm": mean("accel_err_mm"),
            "accel_err_cam_mm": mean("accel_err_cam_mm"), "root_err_mm": mean("root_err_mm"),
            "persons": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in p.items()} for p in m["persons"]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-gap", type=int, default=10)
    ap.add_argument("--min-track-frames", type=int, default=3,
                    help="tracks seen in fewer frames are tentative and set aside (1: the tracker before them)")
    ap.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                    help="the fit engine's mirrored views (hmrcli's default)")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="hmrcli-seq-"))
    body = load_body_model("free")
    fps = 30.0
    pair = walking_pair(body, n_frames=a.frames, fps=fps, seed=a.seed)
    frames_dir = work / "frames"
    t0 = time.perf_counter()
    if len(list(frames_dir.glob("frame_*.png"))) != a.frames:
        render_frames(pair, np.asarray(body.faces), frames_dir, seed=a.seed)
    t_render = time.perf_counter() - t0

    engine, choice = make_engine("fit", checkpoint=None, landmarks="full", mirror=a.mirror)
    detector = create_detector("auto")
    seq_opts = SequenceOptions(folders=True, fps=fps, smooth=SmoothOptions(method="one-euro"),
                               tracker=TrackerOptions(max_gap=a.max_gap, min_frames=a.min_track_frames))
    t0 = time.perf_counter()
    summ = run_inference(expand_inputs([str(frames_dir)]), engine, InferOptions(out=work / "out", sequence=seq_opts),
                         detector=detector)
    t_infer = time.perf_counter() - t0
    detector_name = getattr(detector, "name", type(detector).__name__)
    engine.close()
    detector.close()

    seq = find_sequences(expand_inputs([str(frames_dir)]), seq_opts)[0]
    kb = KeypointBody(body, dtype=torch.float64)
    per_frame, _ = read_sequence_observations(work / "out", seq, lambda name, gender: kb)
    t0 = time.perf_counter()
    tracks = track_people(per_frame, seq_opts.tracker)
    t_track = time.perf_counter() - t0
    raw = {t.track_id: (t.frames, np.stack([o.joints_cam for o in t.observations])) for t in tracks}
    report = {
        "benchmark": "sequence_check", "frames": a.frames, "fps": fps, "seed": a.seed, "image": list(pair.image_wh),
        "scene": "two free-model bodies walking past each other at 4.5 m and 6.5 m (hmrcli.bench.sequence)",
        "engine": str(choice), "mirror": a.mirror, "detector": detector_name, "body_model": "free",
        "per_frame_run": {"images": summ.images, "done": summ.done, "persons": summ.persons,
                          "seconds": round(t_infer, 1)},
        "persons_detected_per_frame": [len(f) for f in per_frame],
        "tracking_seconds": round(t_track, 4),
        "methods": {"per-frame": summarise(sequence_metrics(pair, raw))},
    }
    base = report["methods"]["per-frame"]
    for method in ("none", "one-euro", "fit-window"):
        t0 = time.perf_counter()
        sm = [smooth_track(t, kb, fps, SmoothOptions(method=method)) for t in tracks]
        dt = time.perf_counter() - t0
        r = summarise(sequence_metrics(pair, {s.track_id: (s.frames, s.joints) for s in sm}))
        r["seconds"] = round(dt, 2)
        r["accel_err_change_pct"] = round(100 * (r["accel_err_mm"] / base["accel_err_mm"] - 1), 1)
        r["accel_err_cam_change_pct"] = round(100 * (r["accel_err_cam_mm"] / base["accel_err_cam_mm"] - 1), 1)
        r["mpjpe_change_pct"] = round(100 * (r["mpjpe_mm"] / base["mpjpe_mm"] - 1), 1)
        r["passes"] = bool(r["identity_switches"] == 0 and r["accel_err_change_pct"] <= -50
                           and r["mpjpe_change_pct"] <= 5)
        report["methods"][method] = r
    report["criteria"] = "0 identity switches; acceleration error (pelvis-aligned) at least 50 % below the per-frame " \
                         "estimates'; MPJPE at most 5 % above theirs"
    report["seconds"] = {"render": round(t_render, 1), "infer": round(t_infer, 1)}
    report["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                         "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.is_available()}
    report["work"] = str(work)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
