"""A synthetic video with known answers for tracking and smoothing: two bodies walking past each other.

:func:`walking_pair` poses the body model (free by default) as two people walking across
the picture in opposite directions at different depths (one passes in front of the other
half-way), with a procedural gait (hips, knees, arms, elbows, a slight torso twist and
bounce) at ``fps``; :func:`render_frames` renders them with hmrcli's renderer over a
static procedural background and writes ``frame_<k>.png`` (no zero padding: frame folders
must be sorted naturally). :func:`sequence_metrics` scores tracks against the truth:
identity switches, MPJPE and acceleration error.

Units: metres, pixels, frames. Camera: OpenCV (x right, y down, z forward), at the origin,
looking along +z, focal length = the image diagonal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from hmrcli import geometry as G
from hmrcli.bench.synthetic import textured_background
from hmrcli.body import BodyModel
from hmrcli.body.pose_limits import POSE_MEAN
from hmrcli.render import render

__all__ = ["WalkingPair", "walking_pair", "render_frames", "sequence_metrics", "accel_error", "identity_switches"]


@dataclass
class WalkingPair:
    """Ground truth of P = 2 bodies over T frames: rotmats (P, T, 24, 3, 3) (joint 0 the
    camera-frame orientation), betas (P, 10), transl (P, T, 3) metres (X_camera = X_model +
    transl), joints (P, T, 24, 3) and vertices (P, T, V, 3) in the camera frame, K (3, 3),
    image_wh, fps."""

    rotmats: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    joints: np.ndarray
    vertices: np.ndarray
    K: np.ndarray
    image_wh: tuple[int, int]
    fps: float


def _gait(phase: np.ndarray) -> np.ndarray:
    """(T,) gait phase (radians) -> (T, 23, 3, 3) body-joint rotations of a walk."""
    T = len(phase)
    s, c = np.sin(phase), np.cos(phase)
    aa = np.tile(np.asarray(POSE_MEAN, dtype=np.float64), (T, 1, 1))
    aa[:, 0, 0] = -0.45 * s                      # left hip: forward (negative x) and back
    aa[:, 1, 0] = 0.45 * s                       # right hip
    aa[:, 3, 0] = 0.15 + 0.55 * np.clip(-c, 0, None) ** 1.5   # left knee bends in its swing
    aa[:, 4, 0] = 0.15 + 0.55 * np.clip(c, 0, None) ** 1.5    # right knee
    aa[:, 2, 1] = 0.08 * s                       # spine1: a slight twist
    rot = G.axis_angle_to_rotmat(aa.reshape(-1, 3)).reshape(T, 23, 3, 3)
    swing_l = G.axis_angle_to_rotmat(np.stack([0.35 * s, 0 * s, 0 * s], 1))   # arms swing against the legs
    swing_r = G.axis_angle_to_rotmat(np.stack([-0.35 * s, 0 * s, 0 * s], 1))
    rot[:, 15] = swing_l @ rot[:, 15]
    rot[:, 16] = swing_r @ rot[:, 16]
    return rot


def walking_pair(body: BodyModel, n_frames: int = 60, fps: float = 30.0, image_wh: tuple[int, int] = (960, 540),
                 seed: int = 0) -> WalkingPair:
    """Two people crossing (module docstring): person 0 walks left to right at 4.5 m from
    the camera, person 1 right to left at 6.5 m; their paths cross in the picture half-way."""
    rng = np.random.default_rng(seed)
    w, h = image_wh
    K = G.intrinsics(float(G.default_focal(w, h)), w, h)
    t = np.arange(n_frames) / fps
    flip = np.diag([1.0, -1.0, -1.0])  # body +Y up, facing +Z -> camera y down, facing the camera
    people = [  # (depth m, x start, x end, heading about the body's up axis, stride Hz, phase)
        (4.5, -1.6, 1.6, np.pi / 2, 0.9, 0.0),
        (6.5, 1.9, -1.9, -np.pi / 2, 0.85, 1.3),
    ]
    betas = np.clip(rng.normal(scale=0.8, size=(2, 10)), -1.5, 1.5)
    rots, trs, joints, verts = [], [], [], []
    for p, (z, x0, x1, heading, f, ph0) in enumerate(people):
        phase = 2 * np.pi * f * t + ph0
        glob = flip @ G.axis_rotation(1, np.array([heading]))[0]
        rot = np.concatenate([np.broadcast_to(glob, (n_frames, 1, 3, 3)), _gait(phase)], 1)
        out = body(torch.as_tensor(rot), torch.as_tensor(np.broadcast_to(betas[p], (n_frames, 10)).copy()))
        j = out.joints.numpy()
        x = x0 + (x1 - x0) * t / t[-1]
        pelvis = np.stack([x, -0.05 + 0.02 * np.cos(2 * phase), np.full(n_frames, z)], 1)
        tr = pelvis - j[:, 0]
        rots.append(rot)
        trs.append(tr)
        joints.append(j + tr[:, None])
        verts.append(out.vertices.numpy() + tr[:, None])
    return WalkingPair(np.stack(rots), betas, np.stack(trs), np.stack(joints), np.stack(verts), K, (w, h), fps)


def render_frames(pair: WalkingPair, faces: np.ndarray, out_dir: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Render every frame (both bodies, over one static background) to
    ``out_dir/frame_<k>.png`` (k from 0, not zero-padded); returns the paths in frame order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w, h = pair.image_wh
    bg = textured_background(np.random.default_rng(seed), w, h, colours=(40.0, 220.0), blotches=50.0, grain=6.0)
    paths = []
    for k in range(pair.vertices.shape[1]):
        img = render([(pair.vertices[0, k], faces), (pair.vertices[1, k], faces)], pair.K, (w, h), background=bg).rgb
        p = out / f"frame_{k}.png"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(p)
    return paths


def accel_error(pred: np.ndarray, gt: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Per usable frame, mean over joints of |a_pred - a_gt| (the second difference of the
    joint positions, metres per frame^2), at frames whose neighbours before and after are
    both present. pred, gt (T, J, 3) at the frame indices ``frames`` (T,)."""
    ok = [i for i in range(1, len(frames) - 1) if frames[i] - frames[i - 1] == 1 and frames[i + 1] - frames[i] == 1]
    if not ok:
        return np.zeros(0)
    i = np.asarray(ok)
    ap = pred[i - 1] - 2 * pred[i] + pred[i + 1]
    ag = gt[i - 1] - 2 * gt[i] + gt[i + 1]
    return np.linalg.norm(ap - ag, axis=-1).mean(-1)


def identity_switches(assign: np.ndarray) -> int:
    """assign (P, T): the track number matched to each true person per frame (-1: none).
    Counts, per person, how often its track changes between the frames it is matched in."""
    n = 0
    for row in assign:
        seen = row[row >= 0]
        n += int(np.sum(seen[1:] != seen[:-1]))
    return n


def sequence_metrics(gt: WalkingPair, tracks: dict[str, tuple[np.ndarray, np.ndarray]],
                     match_radius: float = 0.3) -> dict:
    """Score tracks {id: (frames (T,), joints (T, 24, 3) camera frame)} against the truth.

    Per frame, tracks are matched to the true persons in the picture, as a viewer does: by
    the mean distance between the projected 24 joints of the track and of the person
    (Hungarian, pixels; the whole pose, so two people who overlap but face opposite ways
    are told apart; a person keeps its last track while that one still fits, as CLEAR-MOT
    does), allowed up to ``match_radius`` times the person's projected height (a monocular
    estimate's depth, and with it its metric position, can be off by decimetres while it
    covers the right person). Returns ``identity_switches``, ``tracks``, ``matched`` (person-
    frames matched / present), and per true person its main track (the one matched most
    often) with, over that track's frames, ``mpjpe_mm`` (pelvis-aligned, 24 joints),
    ``accel_err_mm`` (pelvis-aligned, per frame^2), ``accel_err_cam_mm`` (camera frame, path
    included) and ``root_err_mm``."""
    P, T = gt.joints.shape[:2]
    ids = sorted(tracks)
    at = {tid: {int(f): i for i, f in enumerate(tracks[tid][0])} for tid in ids}
    assign = np.full((P, T), -1)
    last = [-1] * P  # the track each person was last matched to

    def px(x: np.ndarray) -> np.ndarray:
        uv = x @ gt.K.T
        return uv[..., :2] / uv[..., 2:]

    for k in range(T):
        present = [n for n, tid in enumerate(ids) if k in at[tid]]
        if not present:
            continue
        g2 = px(gt.joints[:, k])  # (P, 24, 2)
        height = g2[..., 1].max(-1) - g2[..., 1].min(-1)
        cost = np.array([[np.linalg.norm(px(tracks[ids[n]][1][at[ids[n]][k]]) - g2[p], axis=-1).mean() / height[p]
                          for n in present] for p in range(P)])
        # CLEAR-MOT (Bernardin & Stiefelhagen 2008; py-motmetrics): a person keeps the track it was
        # last matched to while that track is present and within the radius; the rest by Hungarian
        free_p, free_n = list(range(P)), list(range(len(present)))
        for p in range(P):
            if last[p] in present and cost[p, present.index(last[p])] <= match_radius:
                assign[p, k] = last[p]
                free_p.remove(p)
                free_n.remove(present.index(last[p]))
        if free_p and free_n:
            sub = cost[np.ix_(free_p, free_n)]
            rows, cols = linear_sum_assignment(sub)
            for r, c in zip(rows, cols):
                if sub[r, c] <= match_radius:
                    assign[free_p[r], k] = present[free_n[c]]
        for p in range(P):
            if assign[p, k] >= 0:
                last[p] = int(assign[p, k])
    out = {"identity_switches": identity_switches(assign), "tracks": len(ids),
           "matched_person_frames": int((assign >= 0).sum()), "person_frames": int(P * T), "persons": []}
    for p in range(P):
        got = assign[p][assign[p] >= 0]
        if not len(got):
            out["persons"].append({"track": None})
            continue
        n = int(np.bincount(got).argmax())
        fr, jp = tracks[ids[n]]
        g = gt.joints[p, fr]
        al_p, al_g = jp - jp[:, :1], g - g[:, :1]
        out["persons"].append({
            "track": ids[n], "frames": int(len(fr)),
            "mpjpe_mm": float(1000 * np.linalg.norm(al_p - al_g, axis=-1).mean()),
            "accel_err_mm": float(1000 * accel_error(al_p, al_g, fr).mean()),
            "accel_err_cam_mm": float(1000 * accel_error(jp, g, fr).mean()),
            "root_err_mm": float(1000 * np.linalg.norm(jp[:, 0] - g[:, 0], axis=-1).mean()),
        })
    return out
