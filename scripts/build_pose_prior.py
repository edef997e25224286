#!/usr/bin/env python
"""Build hmrcli's learned pose prior (``models/pose_prior/cmu_gmm8.npz``) from CMU motion capture.

Usage::

    python scripts/build_pose_prior.py --bvh PATH/TO/IClone-CMU-Mocap/All_BVH/subjects \\
        [--out models/pose_prior/cmu_gmm8.npz] [--plots DIR] [--report FILE.json]
    python scripts/build_pose_prior.py --help

Input: BVH files of the CMU Graphics Lab Motion Capture Database as retargeted onto
Reallusion's Character Creator rig (``CC_Base_*`` joint names) by the
``DragonForgedTheArtist/IClone-CMU-Mocap`` repository (see ``models/pose_prior/README.md``
for the exact commit, files and licence). ``--bvh`` takes folders (searched recursively for
``*.bvh``) and/or files; by default only the trials listed in ``DEFAULT_TRIALS`` (the ones
the shipped prior was built from) are used, ``--trials all`` uses every file found.

Recipe (deterministic: fixed file list, frame stride and seed; the .npz is written with
fixed zip timestamps):

1. **BVH forward kinematics** (own parser, numpy): every joint's global rotation and
   position per frame; frames subsampled with ``--stride`` (default 2: 60 -> 30 fps).
2. **Retargeting to the 24-joint SMPL-layout body** (the free body by default,
   ``--body-model``), by *orientation transfer*: each SMPL joint j is driven by one mocap
   bone m(j) (``cc_rig``) with a constant calibration rotation C_j, so that the SMPL joint's
   global rotation is ``G_smpl_j(t) = G_mocap_m(j)(t) @ C_j``; body-pose rotations are then
   ``R_j = G_smpl_parent(j)^T G_smpl_j``. Twists therefore come from the mocap bones' own
   orientations, not from an IK guess. C_j is calibrated once over all frames:

   * limbs (hips/thighs, knees/shins, shoulders/upper arms, elbows/forearms, wrists/hands):
     two direction pairs (a TRIAD). The *primary* makes the SMPL bone (joint -> child joint
     of the body's rest T-pose) point exactly along the mocap bone; the *secondary* fixes the
     twist anatomically: for thighs/shins the knee's hinge axis, for upper arms/forearms the
     elbow's hinge axis (estimated from the data: mean axis of the rotations between the
     straightest and the bent frames) map to SMPL's flexion axes (knee +x; left elbow -y,
     right elbow +y, as in ``hmrcli.body.pose_limits``); for hands the pinky->index direction
     maps to +z (palms down in the T-pose);
   * ankles and balls of the feet: flat on the floor with the toes forward (SMPL rest) in the
     frames where the foot is planted (low and still; flat-floor trials);
   * pelvis, spine1-3, neck, head and collars: "upright": averaged over the walking trials
     their SMPL global rotations equal the body's heading (upright, facing where the hips
     face), i.e. the average walking posture maps to SMPL's rest posture;
   * the hand joints (22, 23) stay at rest relative to the wrists (CMU captures no hand
     articulation).
3. **Check**: the retargeted body's joints (the body's own rest skeleton posed by the
   retargeted rotations, uniformly scaled to the mocap skeleton's limb size per file, hip
   midpoints aligned; also per-frame similarity-aligned, and with the body's bones set to the
   mocap bone lengths) against the mocap joints they correspond to, limb-direction errors,
   and PNG plots of retargeted skeletons over the mocap skeletons and of the prior's means
   and samples (``--plots``).
4. **Prior**: the global orientation is dropped; the 69-d axis-angle body pose
   (joints 1..23) of every kept frame and (unless ``--no-mirror``) its left/right mirror
   image (swap left/right joints, axis-angle (x, y, z) -> (x, -y, -z)) are fitted with a
   Gaussian mixture (``--components`` 8, full covariances, EM in numpy, k-means++
   initialisation, ``--n-init`` restarts, ``--reg-covar`` added to every covariance's
   diagonal). The hand joints' 6 dimensions carry no data: every component gives them mean 0
   and an isotropic ``--hand-std`` standard deviation, uncorrelated with the rest.

Output arrays (float64 unless noted; no pickled objects): ``means (K, 69)``,
``covariances (K, 69, 69)``, ``precisions_chol (K, 69, 69)`` (lower-triangular L with
precision = L @ L.T), ``weights (K,)``, ``joint_names (23,)`` (str), ``metadata`` (0-d str,
JSON: body model, frame counts, sources with sha256, retargeting figures, options).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hmrcli.assets import sha256_file  # noqa: E402
from hmrcli.body import JOINT_NAMES, SMPL_PARENTS  # noqa: E402

SOURCE_REPO = "https://github.com/DragonForgedTheArtist/IClone-CMU-Mocap"
SOURCE_COMMIT = "79529f962ade3274163af53cd92179cee2ed9407"

#: The trials the shipped prior was built from: every BVH file present in the source
#: repository's snapshot at SOURCE_COMMIT (the snapshot lacked the files of 4 MiB and more:
#: 001_02-07, 001_09-13, 003_03, 003_04, 006_13).
DEFAULT_TRIALS: tuple[str, ...] = (
    "001_01", "001_08", "001_14",
    "002_01", "002_02", "002_03", "002_04", "002_05", "002_06", "002_07", "002_08", "002_09", "002_10",
    "003_01", "003_02",
    "005_01", "005_02", "005_03", "005_04", "005_05", "005_06", "005_07", "005_08", "005_09", "005_10",
    "005_11", "005_12", "005_13", "005_14", "005_15", "005_16", "005_17", "005_18", "005_19", "005_20",
    "006_01", "006_02", "006_03", "006_04", "006_05", "006_06", "006_07", "006_08", "006_09", "006_10",
    "006_11", "006_12", "006_14", "006_15",
    "007_01", "007_02", "007_03", "007_04", "007_05", "007_06", "007_07", "007_08", "007_09", "007_10",
    "007_11", "007_12",
)

#: trials whose average posture defines the upright torso (CMU index: "walk", "slow/brisk walk")
WALK_TRIALS = frozenset(("002_01", "002_02", "005_01", "006_01") + tuple(f"007_{i:02d}" for i in range(1, 13)))
#: trials on a flat floor (planted-foot calibration); not 001 (playground) and 003 (uneven terrain)
FLOOR_SUBJECTS = ("002_", "005_", "006_", "007_")

SMPL_JOINTS = JOINT_NAMES  # the body model's 24 joints (hmrcli.body)
#: (left, right) SMPL joint pairs, for mirroring.
LR_PAIRS = ((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21), (22, 23))
HAND_JOINTS = (22, 23)


# ============================================================================ BVH
@dataclass
class Bvh:
    names: list[str | None]   # None for End Sites
    parents: list[int]
    offsets: np.ndarray       # (J, 3)
    channels: list[list[str]]
    frames: np.ndarray        # (F, C)
    frame_time: float


def parse_bvh(path: Path) -> Bvh:
    """A BVH file (any hierarchy, any channel order); frame lines with the wrong number of
    values are dropped."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    head, sep, motion = text.partition("MOTION")
    if not sep:
        raise ValueError(f"{path}: no MOTION section")
    toks = head.split()
    names: list[str | None] = []
    parents: list[int] = []
    offsets: list[list[float] | None] = []
    chans: list[list[str]] = []
    stack: list[int] = []
    last = -1
    i = 0
    while i < len(toks):
        t = toks[i]
        if t in ("ROOT", "JOINT") or t == "End":
            names.append(toks[i + 1] if t != "End" else None)
            parents.append(stack[-1] if stack else -1)
            offsets.append(None)
            chans.append([])
            last = len(names) - 1
            i += 2
        elif t == "{":
            stack.append(last)
            i += 1
        elif t == "}":
            stack.pop()
            i += 1
        elif t == "OFFSET":
            offsets[last] = [float(x) for x in toks[i + 1: i + 4]]
            i += 4
        elif t == "CHANNELS":
            n = int(toks[i + 1])
            chans[last] = toks[i + 2: i + 2 + n]
            i += 2 + n
        else:
            i += 1
    lines = motion.strip().splitlines()
    frame_time = float(lines[1].split(":")[1])
    nch = sum(len(c) for c in chans)
    rows = [ln.split() for ln in lines[2:]]
    good = [r for r in rows if len(r) == nch]
    frames = np.array(" ".join(" ".join(r) for r in good).split(), dtype=np.float64).reshape(len(good), nch)
    return Bvh(names, parents, np.array([o if o is not None else [0.0] * 3 for o in offsets]), chans, frames, frame_time)


def _axis_rot(axis: str, deg: np.ndarray) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    if axis == "X":
        m = [[o, z, z], [z, c, -s], [z, s, c]]
    elif axis == "Y":
        m = [[c, z, s], [z, o, z], [-s, z, c]]
    else:
        m = [[c, -s, z], [s, c, z], [z, z, o]]
    return np.moveaxis(np.array(m), [0, 1], [-2, -1])


def bvh_fk(b: Bvh, frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Global rotations (F, J, 3, 3) and positions (F, J, 3) of every joint (End Sites
    included): local transform = translate(offset [+ position channels]) @ rotate(channels in
    the listed order)."""
    fr = b.frames if frames is None else frames
    n, nj = fr.shape[0], len(b.names)
    G = np.zeros((n, nj, 3, 3))
    P = np.zeros((n, nj, 3))
    col = 0
    for j in range(nj):
        R = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
        t = np.broadcast_to(b.offsets[j], (n, 3)).copy()
        for c in b.channels[j]:
            v = fr[:, col]
            col += 1
            if c.lower().endswith("rotation"):
                R = R @ _axis_rot(c[0].upper(), v)
            elif c.lower().endswith("position"):
                t[:, "XYZ".index(c[0].upper())] += v
        p = b.parents[j]
        if p < 0:
            G[:, j], P[:, j] = R, t
        else:
            G[:, j] = G[:, p] @ R
            P[:, j] = P[:, p] + np.einsum("fij,fj->fi", G[:, p], t)
    return G, P


# ============================================================================ rotations
def rotmat_to_rotvec(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 3) axis-angle, angle in [0, pi]."""
    R = np.asarray(R, dtype=np.float64)
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    tr = m00 + m11 + m22
    q = np.stack([
        np.sqrt(np.maximum(0.0, 1 + tr)) / 2,
        np.sqrt(np.maximum(0.0, 1 + m00 - m11 - m22)) / 2,
        np.sqrt(np.maximum(0.0, 1 - m00 + m11 - m22)) / 2,
        np.sqrt(np.maximum(0.0, 1 - m00 - m11 + m22)) / 2,
    ], -1)
    q[..., 1] = np.copysign(q[..., 1], R[..., 2, 1] - R[..., 1, 2])
    q[..., 2] = np.copysign(q[..., 2], R[..., 0, 2] - R[..., 2, 0])
    q[..., 3] = np.copysign(q[..., 3], R[..., 1, 0] - R[..., 0, 1])
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    v = q[..., 1:]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    ang = 2 * np.arctan2(s, q[..., :1])
    return np.where(s > 1e-12, v / np.maximum(s, 1e-12) * ang, 2 * v)


def rotvec_to_rotmat(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    th = np.linalg.norm(v, axis=-1, keepdims=True)
    k = v / np.maximum(th, 1e-12)
    K = np.zeros(v.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2] = -k[..., 2], k[..., 1]
    K[..., 1, 0], K[..., 1, 2] = k[..., 2], -k[..., 0]
    K[..., 2, 0], K[..., 2, 1] = -k[..., 1], k[..., 0]
    th = th[..., None]
    return np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * (K @ K)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def triad(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Orthonormal frame (3, 3), columns: primary, secondary made orthogonal, their cross."""
    e1 = _unit(primary)
    e2 = _unit(secondary - (secondary @ e1) * e1)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=1)


# ============================================================================ rig mapping
# Character Creator rig (CC_Base_*). Per SMPL joint: the mocap bone whose global rotation drives
# it ("bone"), the mocap point it corresponds to ("at", for the checks), and its calibration:
# calib="upright", or the (mocap, SMPL) direction pairs "primary" and "secondary". Mocap
# direction specs: ("pts", a, b) = position of b minus position of a (a point is a joint name or
# a tuple of names, averaged), expressed in the driving bone's frame and averaged over frames;
# ("hinge", name) = the hinge axis estimated for "knee_L"... in the driving bone's frame;
# ("planted_up", side) = world up in the bone's frame averaged over the planted frames of that
# foot. SMPL specs: ("joints", a, b) rest joint b minus rest joint a; ("axis", v).
def _cc(s: str, name: str) -> str:
    return f"CC_Base_{s}_{name}" if s else f"CC_Base_{name}"


def cc_rig() -> dict[int, dict]:
    rig: dict[int, dict] = {}
    # Torso, neck, head (and collars, below): "upright" -- on average over the walking trials
    # (WALK_TRIALS) their SMPL global rotations equal the body's heading (upright, facing the
    # direction the hips face), i.e. the average walking posture maps to SMPL's rest posture.
    # (Calibrating them on joint positions instead would map the CC spine's zig-zag -- its
    # waist->spine01 segment leans ~45 deg forward -- onto SMPL's spine as constant opposite
    # bends; taking the CC rig's own bone frames leaves the ~20 deg forward pelvis tilt of the
    # CMU->CC retargeting in the hips and the spine.)
    for j, bone, at in ((0, "Pelvis", (_cc("L", "Thigh"), _cc("R", "Thigh"))), (3, "Waist", None), (6, "Spine01", None),
                        (9, "Spine02", None), (12, "NeckTwist01", None), (15, "Head", None)):
        rig[j] = dict(bone=_cc("", bone), at=at or _cc("", bone), calib="upright")
    for s, side, sgn in (("L", 0, 1.0), ("R", 1, -1.0)):
        hip, knee, ankle, foot = 1 + side, 4 + side, 7 + side, 10 + side
        collar, shoulder, elbow, wrist, hand = 13 + side, 16 + side, 18 + side, 20 + side, 22 + side
        rig[hip] = dict(bone=_cc(s, "Thigh"), at=_cc(s, "Thigh"),
                        primary=(("pts", _cc(s, "Thigh"), _cc(s, "Calf")), ("joints", hip, knee)),
                        secondary=(("hinge", f"knee_{s}"), ("axis", (1.0, 0.0, 0.0))))
        rig[knee] = dict(bone=_cc(s, "Calf"), at=_cc(s, "Calf"),
                         primary=(("pts", _cc(s, "Calf"), _cc(s, "Foot")), ("joints", knee, ankle)),
                         secondary=(("hinge", f"knee_{s}"), ("axis", (1.0, 0.0, 0.0))))
        # feet: flat on the floor with the toes forward in the frames where the foot is planted
        # (the CC ankle and ball-of-foot joints sit at other heights than SMPL's)
        rig[ankle] = dict(bone=_cc(s, "Foot"), at=_cc(s, "Foot"),
                          primary=(("planted_up", s), ("axis", (0.0, 1.0, 0.0))),
                          secondary=(("pts", _cc(s, "Foot"), _cc(s, "ToeBase")), ("axis", (0.0, 0.0, 1.0))))
        rig[foot] = dict(bone=_cc(s, "ToeBase"), at=_cc(s, "ToeBase"),
                         primary=(("planted_up", s), ("axis", (0.0, 1.0, 0.0))),
                         secondary=(("pts", _cc(s, "ToeBase"), _cc(s, "MidToe1")), ("axis", (0.0, 0.0, 1.0))))
        rig[collar] = dict(bone=_cc(s, "Clavicle"), at=_cc(s, "Clavicle"), calib="upright")
        # elbow flexion: left -y, right +y (hmrcli.body.pose_limits)
        flex = (0.0, -sgn, 0.0)
        rig[shoulder] = dict(bone=_cc(s, "Upperarm"), at=_cc(s, "Upperarm"),
                             primary=(("pts", _cc(s, "Upperarm"), _cc(s, "Forearm")), ("joints", shoulder, elbow)),
                             secondary=(("hinge", f"elbow_{s}"), ("axis", flex)))
        rig[elbow] = dict(bone=_cc(s, "Forearm"), at=_cc(s, "Forearm"),
                          primary=(("pts", _cc(s, "Forearm"), _cc(s, "Hand")), ("joints", elbow, wrist)),
                          secondary=(("hinge", f"elbow_{s}"), ("axis", flex)))
        # T-pose palms down: the index side of the hand faces forward (+z)
        rig[wrist] = dict(bone=_cc(s, "Hand"), at=_cc(s, "Hand"),
                          primary=(("pts", _cc(s, "Hand"), _cc(s, "Mid1")), ("joints", wrist, hand)),
                          secondary=(("pts", _cc(s, "Pinky1"), _cc(s, "Index1")), ("axis", (0.0, 0.0, 1.0))))
        rig[hand] = dict(bone=None, at=_cc(s, "Mid1"))  # at rest relative to the wrist
    return rig


#: per side: the joints whose height and speed tell a planted foot
def cc_feet() -> dict[str, tuple[str, str]]:
    return {s: (_cc(s, "Foot"), _cc(s, "ToeBase")) for s in ("L", "R")}


#: hinge name -> (parent bone, child bone, straightness end points)
def cc_hinges() -> dict[str, tuple[str, str, str, str]]:
    h = {}
    for s in ("L", "R"):
        h[f"knee_{s}"] = (_cc(s, "Thigh"), _cc(s, "Calf"), _cc(s, "Thigh"), _cc(s, "Foot"))
        h[f"elbow_{s}"] = (_cc(s, "Upperarm"), _cc(s, "Forearm"), _cc(s, "Upperarm"), _cc(s, "Hand"))
    return h


#: bones drawn in the plots / used for the position check: (SMPL joint, SMPL joint) pairs
CHECK_JOINTS = (1, 2, 4, 5, 7, 8, 10, 11, 12, 15, 16, 17, 18, 19, 20, 21)
#: thighs, shins, upper arms, forearms: their directions are transferred exactly
LIMB_BONES = ((1, 4), (4, 7), (2, 5), (5, 8), (16, 18), (18, 20), (17, 19), (19, 21))
#: ankle -> ball of the foot: calibrated on planted feet instead (the rigs place these joints differently)
FOOT_BONES = ((7, 10), (8, 11))


# ============================================================================ data loading
@dataclass
class Clip:
    trial: str
    path: Path
    sha256: str
    n_frames_file: int
    G: np.ndarray         # (F, nb, 3, 3) global rotations of the needed mocap joints
    P: np.ndarray         # (F, nb, 3) their positions
    names: list[str]


def needed_names(rig: dict[int, dict], hinges: dict) -> list[str]:
    out: list[str] = []

    def add(x):
        if isinstance(x, tuple):
            for y in x:
                add(y)
        elif isinstance(x, str) and x.startswith("CC_Base_") and x not in out:
            out.append(x)

    for spec in rig.values():
        add(spec.get("bone"))
        add(spec.get("at"))
        for key in ("primary", "secondary"):
            if key in spec and spec[key][0][0] == "pts":
                add(spec[key][0][1])
                add(spec[key][0][2])
    for v in hinges.values():
        add(v)
    return out


def load_clip(path: Path, names: list[str], stride: int, skip: int) -> Clip:
    b = parse_bvh(path)
    fr = b.frames[skip::stride]
    G, P = bvh_fk(b, fr)
    idx = []
    for n in names:
        if n not in b.names:
            raise KeyError(f"{path}: joint {n} missing (not a Character Creator rig BVH?)")
        idx.append(b.names.index(n))
    return Clip(path.stem, path, sha256_file(path), b.frames.shape[0], G[:, idx], P[:, idx], names)


# ============================================================================ calibration
def _pt(clip_P: np.ndarray, names: list[str], spec) -> np.ndarray:
    if isinstance(spec, tuple):
        return np.mean([clip_P[:, names.index(s)] for s in spec], axis=0)
    return clip_P[:, names.index(spec)]


def estimate_hinge(G: np.ndarray, P: np.ndarray, names: list[str], hinge: tuple[str, str, str, str],
                   min_angle: float = math.radians(35)) -> tuple[np.ndarray, np.ndarray, dict]:
    """Hinge (flexion) axis of a knee/elbow in the parent's and the child's bone frames.

    M(t) = G_parent^T G_child; straightest frame s = argmax |end - start|; the rotations
    M(t) M(s)^T of the frames bent by more than ``min_angle`` are rotations about the hinge
    axis (in the parent's frame) from straight to bent, i.e. about the flexion axis; their
    mean unit axis is returned, with its child-frame counterpart M(s)^T a."""
    pa, ch, e0, e1 = hinge
    M = np.einsum("fji,fjk->fik", G[:, names.index(pa)], G[:, names.index(ch)])
    length = np.linalg.norm(P[:, names.index(e1)] - P[:, names.index(e0)], axis=-1)
    s = int(np.argmax(length))
    rel = M @ M[s].T
    rv = rotmat_to_rotvec(rel)
    ang = np.linalg.norm(rv, axis=-1)
    sel = ang > min_angle
    axes = rv[sel] / ang[sel, None]
    a = _unit(axes.mean(0))
    spread = float(np.degrees(np.arccos(np.clip(axes @ a, -1, 1))).mean())
    return a, M[s].T @ a, {"frames": int(sel.sum()), "mean_deviation_deg": spread, "straight_frame_length": float(length[s])}


def planted_frames(P: np.ndarray, names: list[str], joints: tuple[str, str], height_tol: float = 2.0,
                   speed_tol: float = 0.5) -> np.ndarray:
    """(F,) bool: both joints within ``height_tol`` of their clip minimum height (world +Y) and
    moving less than ``speed_tol`` per kept frame (mocap units, cm)."""
    ok = np.ones(P.shape[0], dtype=bool)
    for n in joints:
        p = P[:, names.index(n)]
        ok &= p[:, 1] < np.percentile(p[:, 1], 2) + height_tol
        v = np.linalg.norm(np.diff(p, axis=0), axis=-1)
        ok &= np.concatenate([v[:1], v]) < speed_tol
    return ok


def calibrate(clips: list[Clip], rig: dict[int, dict], hinges: dict, feet: dict, floor_trials: set[str],
              rest_joints: np.ndarray) -> tuple[dict[int, np.ndarray], dict]:
    """Calibration rotations C_j (SMPL rest frame -> driving mocap bone frame), from the
    frames of all clips (the clips' skeletons must be the same rig)."""
    names = clips[0].names
    G = np.concatenate([c.G for c in clips])
    P = np.concatenate([c.P for c in clips])
    info: dict = {"hinges": {}, "planted_frames": {}}
    hinge_axes = {}
    for hname, h in hinges.items():
        a_par, a_child, hi = estimate_hinge(G, P, names, h)
        hinge_axes[hname] = {h[0]: a_par, h[1]: a_child}
        info["hinges"][hname] = hi
    planted = {}
    for s, joints in feet.items():
        planted[s] = np.concatenate([planted_frames(c.P, names, joints) if c.trial in floor_trials
                                     else np.zeros(c.P.shape[0], dtype=bool) for c in clips])
        info["planted_frames"][s] = int(planted[s].sum())
        if planted[s].sum() < 20:
            raise SystemExit(f"too few planted-foot frames ({planted[s].sum()}) to calibrate the {s} foot")

    def mocap_dir(spec, bone):
        gb = G[:, names.index(bone)]
        if spec[0] == "hinge":
            return hinge_axes[spec[1]][bone]
        if spec[0] == "local":
            return np.asarray(spec[1], dtype=np.float64)
        if spec[0] == "planted_up":
            sel = planted[spec[1]]
            return _unit(gb[sel, 1, :].mean(0))      # world +Y in the bone frame: G^T e_y = row 1 of G
        v = _pt(P, names, spec[2]) - _pt(P, names, spec[1])
        return _unit(_unit(np.einsum("fji,fj->fi", gb, v)).mean(0))

    def smpl_dir(spec):
        if spec[0] == "joints":
            return rest_joints[spec[2]] - rest_joints[spec[1]]
        if spec[0] == "axis":
            return np.asarray(spec[1], dtype=np.float64)
        raise ValueError(spec)

    walk = np.concatenate([np.full(c.P.shape[0], c.trial in WALK_TRIALS) for c in clips])
    info["walk_frames"] = int(walk.sum())
    if walk.sum() < 100:
        raise SystemExit(f"too few walking frames ({walk.sum()}) to calibrate the torso")
    lat = _pt(P, names, rig[1]["at"]) - _pt(P, names, rig[2]["at"])
    lat[:, 1] = 0.0
    ex = _unit(lat)
    ey = np.broadcast_to(np.array([0.0, 1.0, 0.0]), ex.shape)
    heading = np.stack([ex, ey, np.cross(ex, ey)], axis=-1)   # columns: body left, up, forward

    C: dict[int, np.ndarray] = {}
    for j, spec in rig.items():
        if spec.get("bone") is None:
            continue
        bone = spec["bone"]
        if spec.get("calib") == "upright":
            m = np.einsum("fji,fjk->ik", G[walk, names.index(bone)], heading[walk]) / walk.sum()
            u, _, vt = np.linalg.svd(m)
            C[j] = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
            info.setdefault("upright_offset_deg", {})[SMPL_JOINTS[j]] = round(
                float(np.degrees(np.linalg.norm(rotmat_to_rotvec(C[j])))), 1)
            continue
        pm, ps = spec["primary"]
        sm, ss = spec["secondary"]
        a, b = mocap_dir(pm, bone), mocap_dir(sm, bone)
        C[j] = triad(a, b) @ triad(smpl_dir(ps), smpl_dir(ss)).T
        info.setdefault("secondary_vs_primary_deg", {})[SMPL_JOINTS[j]] = round(
            math.degrees(math.acos(min(1.0, abs(float(_unit(a) @ _unit(b)))))), 1)
    return C, info


def retarget(G: np.ndarray, names: list[str], rig: dict[int, dict], C: dict[int, np.ndarray]) -> np.ndarray:
    """SMPL global joint rotations (F, 24, 3, 3) in the mocap world frame."""
    F = G.shape[0]
    Gs = np.zeros((F, 24, 3, 3))
    for j in range(24):
        spec = rig[j]
        if spec.get("bone") is None:
            Gs[:, j] = Gs[:, SMPL_PARENTS[j]]
        else:
            Gs[:, j] = G[:, names.index(spec["bone"])] @ C[j]
    return Gs


def local_rotations(Gs: np.ndarray) -> np.ndarray:
    R = np.zeros_like(Gs)
    R[:, 0] = Gs[:, 0]
    for j in range(1, 24):
        R[:, j] = np.swapaxes(Gs[:, SMPL_PARENTS[j]], -1, -2) @ Gs[:, j]
    return R


def smpl_fk(Gs: np.ndarray, rest_joints: np.ndarray) -> np.ndarray:
    """Joint positions (F, 24, 3) of the body's rest skeleton posed by global rotations Gs."""
    F = Gs.shape[0]
    P = np.zeros((F, 24, 3))
    for j in range(1, 24):
        p = SMPL_PARENTS[j]
        P[:, j] = P[:, p] + Gs[:, p] @ (rest_joints[j] - rest_joints[p])
    return P


def procrustes_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-point distances (F, N) after the similarity transform (rotation, scale,
    translation) of each frame of a (F, N, 3) that best fits b."""
    a0 = a - a.mean(1, keepdims=True)
    b0 = b - b.mean(1, keepdims=True)
    h = np.einsum("fni,fnj->fij", a0, b0)
    u, sv, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("fij,fjk->fik", u, vt)))
    dm = np.ones_like(sv)
    dm[:, 2] = d
    r = np.einsum("fji,fj,fkj->fik", vt, dm, u)            # V diag(dm) U^T
    s = (sv * dm).sum(1) / (a0 ** 2).sum((1, 2))
    fit = s[:, None, None] * np.einsum("fij,fnj->fni", r, a0) + b.mean(1, keepdims=True)
    return np.linalg.norm(fit - b, axis=-1)


def mirror_body_pose(aa: np.ndarray) -> np.ndarray:
    """(N, 23, 3) axis-angle body poses mirrored left/right (x -> -x reflection)."""
    out = aa.copy()
    for l, r in LR_PAIRS:
        out[:, l - 1], out[:, r - 1] = aa[:, r - 1], aa[:, l - 1]
    out[..., 1:] *= -1
    return out


# ============================================================================ GMM (numpy EM)
def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _prec_chol(cov: np.ndarray) -> np.ndarray:
    """Lower-triangular L with L @ L.T = inv(cov), per component."""
    out = np.empty_like(cov)
    eye = np.eye(cov.shape[-1])
    for k in range(cov.shape[0]):
        prec = np.linalg.solve(cov[k], eye)
        out[k] = np.linalg.cholesky(0.5 * (prec + prec.T))
    return out


def gmm_log_prob(X: np.ndarray, means: np.ndarray, prec_chol: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(N, K) log(w_k N(x; mu_k, Sigma_k))."""
    d = X.shape[1]
    out = np.empty((X.shape[0], means.shape[0]))
    for k in range(means.shape[0]):
        y = (X - means[k]) @ prec_chol[k]          # rows: (L^T (x - mu))^T
        out[:, k] = (-0.5 * (y ** 2).sum(1) - 0.5 * d * math.log(2 * math.pi)
                     + np.log(np.diag(prec_chol[k])).sum() + math.log(weights[k]))
    return out


def _kmeans_pp(X: np.ndarray, k: int, rng: np.random.Generator, iters: int = 30) -> np.ndarray:
    c = [X[rng.integers(len(X))]]
    d2 = ((X - c[0]) ** 2).sum(1)
    for _ in range(1, k):
        c.append(X[rng.choice(len(X), p=d2 / d2.sum())])
        d2 = np.minimum(d2, ((X - c[-1]) ** 2).sum(1))
    c = np.array(c)
    for _ in range(iters):
        lab = np.argmin(((X[:, None] - c[None]) ** 2).sum(-1), 1)
        c = np.array([X[lab == i].mean(0) if np.any(lab == i) else c[i] for i in range(k)])
    return c


def fit_gmm(X: np.ndarray, k: int, seed: int = 0, n_init: int = 3, max_iter: int = 300, tol: float = 1e-3,
            reg_covar: float = 1e-2, log=print) -> dict:
    """Full-covariance Gaussian mixture by EM (k-means++ initialisation, best of n_init; stops when the
    mean log-likelihood per sample changes by less than tol, as scikit-learn does)."""
    n, d = X.shape
    best = None
    for init in range(n_init):
        rng = np.random.default_rng(seed + init)
        means = _kmeans_pp(X, k, rng)
        lab = np.argmin(((X[:, None] - means[None]) ** 2).sum(-1), 1)
        resp = np.eye(k)[lab]
        prev = -np.inf
        for it in range(max_iter):
            nk = resp.sum(0) + 10 * np.finfo(float).eps
            weights = nk / n
            means = resp.T @ X / nk[:, None]
            cov = np.empty((k, d, d))
            for c in range(k):
                diff = X - means[c]
                cov[c] = (resp[:, c, None] * diff).T @ diff / nk[c] + reg_covar * np.eye(d)
            pc = _prec_chol(cov)
            lp = gmm_log_prob(X, means, pc, weights)
            lse = _logsumexp(lp, 1)
            ll = float(lse.mean())
            resp = np.exp(lp - lse[:, None])
            if abs(ll - prev) < tol:
                break
            prev = ll
        log(f"  EM init {init}: {it + 1} iterations, mean log-likelihood {ll:.4f}")
        if best is None or ll > best["ll"]:
            best = dict(means=means, covariances=cov, precisions_chol=pc, weights=weights, ll=ll, iterations=it + 1)
    order = np.argsort(-best["weights"], kind="stable")
    for key in ("means", "covariances", "precisions_chol", "weights"):
        best[key] = best[key][order]
    return best


def extend_hands(g: dict, informed: np.ndarray, hand_std: float) -> dict:
    """Insert the uninformed hand dimensions: mean 0, variance hand_std^2, no correlation."""
    k = g["means"].shape[0]
    means = np.zeros((k, 69))
    cov = np.zeros((k, 69, 69))
    means[:, informed] = g["means"]
    ii = np.ix_(informed, informed)
    hand = np.setdiff1d(np.arange(69), informed)
    for c in range(k):
        cov[c][ii] = g["covariances"][c]
        cov[c][hand, hand] = hand_std ** 2
    return dict(means=means, covariances=cov, precisions_chol=_prec_chol(cov), weights=g["weights"].copy())


# ============================================================================ plots
def _skeleton_segments() -> list[tuple[int, int]]:
    return [(SMPL_PARENTS[j], j) for j in range(1, 24) if j not in HAND_JOINTS]


def plot_retarget(path: Path, panels: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 6.4))
    for i, pnl in enumerate(panels):
        for row, (ax_i, label) in enumerate(((0, "front (x-y)"), (2, "side (z-y)"))):
            ax = axes[row, i]
            for a, b in pnl["mocap_segments"]:
                ax.plot([a[ax_i], b[ax_i]], [a[1], b[1]], "-", color="0.55", lw=4, alpha=0.6)
            Ps = pnl["smpl"]
            for p, c in _skeleton_segments():
                col = _side_colour(c)
                ax.plot([Ps[p, ax_i], Ps[c, ax_i]], [Ps[p, 1], Ps[c, 1]], "-o", color=col, lw=1.5, ms=2)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(pnl["title"], fontsize=8)
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle("grey: mocap (CC rig) joints; colour: retargeted body (red = left, blue = right)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _side_colour(joint: int) -> str:
    """Plot colour of a bone by the side of its child joint: red left, blue right, black centre."""
    return "tab:red" if joint in (1, 4, 7, 10, 13, 16, 18, 20) else ("tab:blue" if joint in (2, 5, 8, 11, 14, 17, 19, 21)
                                                                   else "k")


def plot_samples(path: Path, poses: list[np.ndarray], rest_joints: np.ndarray, titles: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(poses)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 5.2))
    for i, aa in enumerate(poses):
        R = rotvec_to_rotmat(np.concatenate([np.zeros((1, 3)), aa.reshape(23, 3)]))
        Gs = np.zeros((24, 3, 3))
        Gs[0] = R[0]
        for j in range(1, 24):
            Gs[j] = Gs[SMPL_PARENTS[j]] @ R[j]
        P = smpl_fk(Gs[None], rest_joints)[0]
        for row, ax_i in enumerate((0, 2)):
            ax = axes[row, i]
            for p, c in _skeleton_segments():
                col = _side_colour(c)
                ax.plot([P[p, ax_i], P[c, ax_i]], [P[p, 1], P[c, 1]], "-o", color=col, lw=1.5, ms=2)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[i], fontsize=8)
    fig.suptitle("body poses (root at rest); top: front, bottom: side (+z right)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ============================================================================ writing
def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a byte-reproducible .npz (hmrcli.export.writers.deterministic_npz_bytes)."""
    from hmrcli.export.writers import atomic_write_bytes, deterministic_npz_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, deterministic_npz_bytes(arrays))


# ============================================================================ main
def find_files(inputs: list[str], trials: str) -> list[Path]:
    files: dict[str, Path] = {}
    for s in inputs:
        p = Path(s)
        cand = sorted(p.rglob("*.bvh")) if p.is_dir() else [p]
        for f in cand:
            files.setdefault(f.stem, f)
    if trials == "all":
        return [files[k] for k in sorted(files)]
    wanted = DEFAULT_TRIALS if trials == "default" else tuple(t.strip() for t in trials.split(",") if t.strip())
    missing = [t for t in wanted if t not in files]
    if missing:
        raise SystemExit(f"BVH files missing for trials: {', '.join(missing)}")
    return [files[t] for t in wanted]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bvh", nargs="+", required=True, help="BVH files or folders (searched recursively)")
    ap.add_argument("--trials", default="default", help="'default' (DEFAULT_TRIALS), 'all', or comma-separated trial ids")
    ap.add_argument("--out", default=str(REPO / "models" / "pose_prior" / "cmu_gmm8.npz"))
    ap.add_argument("--body-model", default="free", help="body model to retarget to (hmrcli.body.load_body_model name)")
    ap.add_argument("--stride", type=int, default=2, help="keep every n-th frame (default 2: 60 -> 30 fps)")
    ap.add_argument("--skip", type=int, default=0, help="drop the first n frames of every file")
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--n-init", type=int, default=3)
    ap.add_argument("--reg-covar", type=float, default=1e-2,
                    help="added to every covariance diagonal (rad^2; default: a 0.1 rad standard-deviation floor)")
    ap.add_argument("--hand-std", type=float, default=0.3, help="std (rad) of the uninformed hand joints")
    ap.add_argument("--no-mirror", dest="mirror", action="store_false")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plots", default=None, help="folder for PNG checks")
    ap.add_argument("--report", default=None, help="write the metadata JSON here too")
    ap.add_argument("--save-poses", default=None, help="write the retargeted body poses (.npy, N x 69) here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    from hmrcli.body import load_body_model

    body = load_body_model(args.body_model)
    rest = body.rest_joints()
    rest = rest - rest[0]

    rig, hinges = cc_rig(), cc_hinges()
    names = needed_names(rig, hinges)
    for f in cc_feet().values():
        names += [n for n in f if n not in names]
    files = find_files(args.bvh, args.trials)
    print(f"{len(files)} BVH files; stride {args.stride}")
    clips = []
    for f in files:
        clips.append(load_clip(f, names, args.stride, args.skip))
    n_kept = sum(c.G.shape[0] for c in clips)
    n_file = sum(c.n_frames_file for c in clips)
    print(f"{n_file} frames in the files, {n_kept} kept ({time.perf_counter() - t0:.1f} s)")

    floor = {c.trial for c in clips if c.trial.startswith(FLOOR_SUBJECTS)}
    C, calib = calibrate(clips, rig, hinges, cc_feet(), floor, rest)
    for k, v in calib["hinges"].items():
        print(f"  hinge {k}: {v['frames']} bent frames, mean deviation from the mean axis {v['mean_deviation_deg']:.1f} deg")

    # ---------------------------------------------------------------- retarget + check
    poses, per_clip, dir_err, pos_err, pos_err2, torso_local, foot_err, pa_err = [], [], [], [], [], [], [], []
    panels = []
    rng = np.random.default_rng(args.seed)
    seg_names = [(rig[SMPL_PARENTS[j]]["at"], rig[j]["at"]) for j in range(1, 24) if j not in HAND_JOINTS]
    for c in clips:
        Gs = retarget(c.G, c.names, rig, C)
        R = local_rotations(Gs)
        aa = rotmat_to_rotvec(R[:, 1:])
        aa[:, [h - 1 for h in HAND_JOINTS]] = 0.0
        poses.append(aa)
        # positions: mocap joints vs the body's rest skeleton posed by Gs, scaled and hip-aligned
        mp = np.stack([_pt(c.P, c.names, rig[j]["at"]) for j in range(24)], 1)
        sp = smpl_fk(Gs, rest)
        lm = np.mean([np.linalg.norm(mp[:, a] - mp[:, b], axis=-1).mean() for a, b in LIMB_BONES])
        ls = np.mean([np.linalg.norm(rest[a] - rest[b]) for a, b in LIMB_BONES])
        scale = lm / ls
        sp = sp * scale
        sp = sp - 0.5 * (sp[:, 1] + sp[:, 2])[:, None] + 0.5 * (mp[:, 1] + mp[:, 2])[:, None]
        e = np.linalg.norm(sp[:, CHECK_JOINTS] - mp[:, CHECK_JOINTS], axis=-1)  # mocap units (cm)
        pos_err.append(e)
        # same check with the body's bones set to this clip's mocap bone lengths (rest directions kept)
        rj = np.zeros((24, 3))
        for j in range(1, 24):
            p = SMPL_PARENTS[j]
            ln = np.linalg.norm(mp[:, j] - mp[:, p], axis=-1).mean()
            rj[j] = rj[p] + _unit(rest[j] - rest[p]) * ln
        sp2 = smpl_fk(Gs, rj)
        sp2 = sp2 - 0.5 * (sp2[:, 1] + sp2[:, 2])[:, None] + 0.5 * (mp[:, 1] + mp[:, 2])[:, None]
        pos_err2.append(np.linalg.norm(sp2[:, CHECK_JOINTS] - mp[:, CHECK_JOINTS], axis=-1))
        torso_local.append(np.degrees(np.linalg.norm(aa[:, [j - 1 for j in (3, 6, 9, 12, 15)]], axis=-1)))
        dm = np.stack([_unit(mp[:, b] - mp[:, a]) for a, b in LIMB_BONES + FOOT_BONES], 1)
        ds = np.stack([_unit(sp[:, b] - sp[:, a]) for a, b in LIMB_BONES + FOOT_BONES], 1)
        de_all = np.degrees(np.arccos(np.clip((dm * ds).sum(-1), -1, 1)))
        de = de_all[:, : len(LIMB_BONES)]
        dir_err.append(de)
        foot_err.append(de_all[:, len(LIMB_BONES):])
        pa_err.append(procrustes_errors(sp[:, CHECK_JOINTS], mp[:, CHECK_JOINTS]))
        per_clip.append({"trial": c.trial, "frames_kept": int(c.G.shape[0]), "frames_in_file": c.n_frames_file,
                         "sha256": c.sha256, "mpjpe_cm": round(float(e.mean()), 2),
                         "limb_direction_err_deg": round(float(de.mean()), 3), "scale_cm_per_m": round(float(scale), 2)})
        if args.plots and (len(panels) < 12) and (c.trial in ("001_01", "001_14", "002_05", "002_06", "002_10", "005_02",
                                                               "005_10", "005_18", "006_14", "002_04", "003_01", "006_10")):
            f = int(rng.integers(c.G.shape[0]))
            segs = [(_pt(c.P[f:f + 1], c.names, a)[0], _pt(c.P[f:f + 1], c.names, b)[0]) for a, b in seg_names]
            panels.append({"title": f"{c.trial} #{f * args.stride + args.skip}", "mocap_segments": segs, "smpl": sp[f]})
    X = np.concatenate(poses).reshape(-1, 23, 3)
    pos_err = np.concatenate(pos_err)
    foot_err = np.concatenate(foot_err)
    pa_err = np.concatenate(pa_err)
    pos_err2 = np.concatenate(pos_err2)
    torso_local = np.concatenate(torso_local)
    dir_err = np.concatenate(dir_err)
    check = {
        "mpjpe_cm_mean": round(float(pos_err.mean()), 2),
        "mpjpe_cm_median": round(float(np.median(pos_err)), 2),
        "mpjpe_cm_p95": round(float(np.percentile(pos_err, 95)), 2),
        "per_joint_cm": {SMPL_JOINTS[j]: round(float(pos_err[:, i].mean()), 2) for i, j in enumerate(CHECK_JOINTS)},
        "same_bone_lengths_mpjpe_cm_mean": round(float(pos_err2.mean()), 2),
        "same_bone_lengths_mpjpe_cm_p95": round(float(np.percentile(pos_err2, 95)), 2),
        "same_bone_lengths_per_joint_cm": {SMPL_JOINTS[j]: round(float(pos_err2[:, i].mean()), 2)
                                           for i, j in enumerate(CHECK_JOINTS)},
        "torso_local_rotation_deg_mean": {SMPL_JOINTS[j]: round(float(torso_local[:, i].mean()), 1)
                                          for i, j in enumerate((3, 6, 9, 12, 15))},
        "pa_mpjpe_cm_mean": round(float(pa_err.mean()), 2),
        "foot_direction_err_deg_mean": round(float(foot_err.mean()), 2),
        "limb_direction_err_deg_mean": round(float(dir_err.mean()), 4),
        "limb_direction_err_deg_max": round(float(dir_err.max()), 4),
        "note": "mocap units are cm (the CC avatar is ~1.75 m tall); the body's rest skeleton scaled per file to the "
                "mocap limb lengths, hip midpoints aligned; errors come from the different proportions and joint "
                "placements of the two skeletons (limb directions are transferred exactly)",
    }
    print(f"retarget check: joint position error mean {check['mpjpe_cm_mean']} cm (median {check['mpjpe_cm_median']}, "
          f"p95 {check['mpjpe_cm_p95']}), after per-frame similarity alignment {check['pa_mpjpe_cm_mean']} cm; "
          f"limb direction error mean {check['limb_direction_err_deg_mean']} deg (max {check['limb_direction_err_deg_max']}), "
          f"ankle->foot {check['foot_direction_err_deg_mean']} deg")
    print("  per joint (cm): " + ", ".join(f"{k} {v}" for k, v in check["per_joint_cm"].items()))
    print(f"  with the mocap bone lengths: mean {check['same_bone_lengths_mpjpe_cm_mean']} cm, p95 "
          f"{check['same_bone_lengths_mpjpe_cm_p95']}; " + ", ".join(f"{k} {v}" for k, v in check["same_bone_lengths_per_joint_cm"].items()))
    print("  mean torso/head local rotation (deg): " + ", ".join(f"{k} {v}" for k, v in check["torso_local_rotation_deg_mean"].items()))

    n_unique = X.shape[0]
    if args.mirror:
        X = np.concatenate([X, mirror_body_pose(X)])
    Xf = X.reshape(len(X), 69)
    hand_dims = np.array([3 * (h - 1) + i for h in HAND_JOINTS for i in range(3)])
    informed = np.setdiff1d(np.arange(69), hand_dims)
    if args.save_poses:
        np.save(args.save_poses, Xf)
    std = Xf[:, informed].std(0)
    print(f"{len(Xf)} training poses; per-dimension std min {std.min():.3f} median {np.median(std):.3f} max {std.max():.3f} rad")

    # ---------------------------------------------------------------- GMM
    t1 = time.perf_counter()
    g = fit_gmm(Xf[:, informed], args.components, seed=args.seed, n_init=args.n_init, reg_covar=args.reg_covar)
    gm = extend_hands(g, informed, args.hand_std)
    lp = gmm_log_prob(Xf, gm["means"], gm["precisions_chol"], gm["weights"])
    best = lp.max(1)
    print(f"GMM: {time.perf_counter() - t1:.1f} s; weights {np.round(gm['weights'], 3).tolist()}; "
          f"training max-component nll mean {-best.mean():.2f}")

    meta = {
        "format": "hmrcli.pose_prior.gmm/1",
        "parameterization": "axis-angle of the 23 body joints (SMPL joints 1..23, SMPL order), each in its "
                            "joint's local frame of the SMPL-layout T-pose rest pose (x: body's left, y: up, "
                            "z: forward); global orientation not modelled",
        "body_model": {"name": body.info.name, "path": str(Path(body.info.path).relative_to(REPO))
                       if str(body.info.path).startswith(str(REPO)) else str(body.info.path),
                       "sha256": sha256_file(Path(body.info.path))},
        "n_components": int(args.components),
        "n_frames_in_files": int(n_file),
        "n_frames": int(n_unique),
        "n_training_poses": int(len(Xf)),
        "mirrored": bool(args.mirror),
        "stride": args.stride,
        "skip": args.skip,
        "reg_covar": args.reg_covar,
        "hand_std": args.hand_std,
        "seed": args.seed,
        "n_init": args.n_init,
        "em_mean_loglik_63d": round(float(g["ll"]), 4),
        "em_iterations": int(g["iterations"]),
        "source": {"repository": SOURCE_REPO, "commit": SOURCE_COMMIT,
                   "original": "CMU Graphics Lab Motion Capture Database, http://mocap.cs.cmu.edu/ "
                               "(subjects 1, 2, 3, 5, 6, 7)",
                   "files": per_clip},
        "retarget_check": check,
        "calibration": calib,
        "script": "scripts/build_pose_prior.py",
    }
    arrays = {
        "means": gm["means"],
        "covariances": gm["covariances"],
        "precisions_chol": gm["precisions_chol"],
        "weights": gm["weights"],
        "joint_names": np.array(SMPL_JOINTS[1:]),
        "metadata": np.array(json.dumps(meta, sort_keys=True)),
    }
    out = Path(args.out)
    save_npz_deterministic(out, arrays)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {sha256_file(out)[:16]}...)")
    if args.report:
        Path(args.report).write_text(json.dumps(meta, indent=1, sort_keys=True))

    if args.plots:
        pdir = Path(args.plots)
        pdir.mkdir(parents=True, exist_ok=True)
        for i in range(0, len(panels), 6):
            plot_retarget(pdir / f"retarget_{i // 6}.png", panels[i:i + 6])
        rs = np.random.default_rng(args.seed + 1)
        comp = rs.choice(len(gm["weights"]), size=8, p=gm["weights"])
        samples = [rs.multivariate_normal(gm["means"][k], gm["covariances"][k]) for k in comp]
        samples = [np.where(np.isin(np.arange(69), hand_dims), 0.0, s) for s in samples]
        plot_samples(pdir / "prior_samples.png", samples, rest, [f"sample, comp {k}" for k in comp])
        plot_samples(pdir / "prior_means.png", list(gm["means"]), rest,
                     [f"mean {k} (w {w:.2f})" for k, w in enumerate(gm["weights"])])
        print(f"plots in {pdir}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
