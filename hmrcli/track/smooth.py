"""One motion per track: one body shape, and the per-frame poses and path smoothed in time.

Methods (``SmoothOptions.method``):

* ``none``: the per-frame estimates, unchanged but for the shape (see below).
* ``one-euro``: the One-Euro filter (Casiez, Roussel, Vogel, CHI 2012) on every joint
  rotation and on the translation. Rotations are filtered as unit quaternions made
  continuous first (each one's sign flipped onto the hemisphere of the previous frame's, so
  q and -q, the same rotation, never alternate) and normalised after; never as axis-angle,
  whose vectors jump at 180 degrees (an upright body facing the camera is already a
  180-degree rotation from the body model's frame). Causal: frame t uses frames <= t only,
  so it could run live. Lag: a first-order low-pass whose cutoff rises with speed,
  fc = min_cutoff + beta |velocity|; a ramp comes out 1 / (2 pi fc) seconds late: at most
  1 / (2 pi min_cutoff) (a slow motion), less when fast (:func:`lag_note`).
* ``fit-window``: the body model fitted to windows of frames at once with an acceleration
  penalty (:func:`hmrcli.fit.temporal.fit_window`); offline, non-causal, no lag.

Shape: a track is one person, so it gets one shape: the per-frame betas' median (their own
space; zeros when the engine's betas could not be applied to the body model). Each frame's
translation is moved so its pelvis stays where the per-frame estimate put it.

Why the One-Euro filter is written here: it is twelve lines of arithmetic; the packages
that offer it filter scalars with their own clocks, not quaternions kept on one hemisphere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from hmrcli.body import BodyModel
from hmrcli.fit.optimize import KeypointBody
from hmrcli.fit.temporal import TemporalFitOptions, TemporalTargets, fit_window
from hmrcli.track.types import Track

__all__ = ["SMOOTHERS", "OneEuroParams", "SmoothOptions", "SmoothedTrack", "one_euro_filter", "smooth_track",
           "lag_note", "continuous_quaternions"]

SMOOTHERS = ("none", "one-euro", "fit-window")


@dataclass(frozen=True)
class OneEuroParams:
    """One-Euro settings: ``min_cutoff`` Hz (cutoff when still), ``beta`` (cutoff increase
    per unit of speed: per radian/s of quaternion speed, per m/s of translation), ``d_cutoff``
    Hz (cutoff of the speed estimate)."""

    min_cutoff: float
    beta: float
    d_cutoff: float = 1.0


@dataclass(frozen=True)
class SmoothOptions:
    """``method``: one of :data:`SMOOTHERS`; ``rotation`` / ``translation``: the One-Euro
    settings for quaternions and for the translation (metres); ``fit``: the fit-window's."""

    method: str = "one-euro"
    rotation: OneEuroParams = OneEuroParams(min_cutoff=1.5, beta=0.5)
    translation: OneEuroParams = OneEuroParams(min_cutoff=1.0, beta=0.7)
    fit: TemporalFitOptions = field(default_factory=TemporalFitOptions)

    def __post_init__(self) -> None:
        if self.method not in SMOOTHERS:
            raise ValueError(f"unknown smoothing {self.method!r}: use {', '.join(SMOOTHERS)}")


@dataclass
class SmoothedTrack:
    """A track's motion: frames (T,) source frame indices, steps (T,), rotmats (T, 24, 3, 3)
    (joint 0: global orientation in the camera frame), transl (T, 3) metres (X_camera =
    X_model + transl), joints (T, 24, 3) camera frame, betas (K,) the one shape (applied when
    ``betas_applied``), persons (T,) the per-frame person index each frame came from,
    ``method`` and ``details`` (solver figures)."""

    track_id: str
    frames: np.ndarray
    steps: np.ndarray
    persons: list[int]
    rotmats: np.ndarray
    transl: np.ndarray
    joints: np.ndarray
    betas: np.ndarray
    betas_applied: bool
    method: str
    details: dict = field(default_factory=dict)


def one_euro_filter(x: np.ndarray, t: np.ndarray, p: OneEuroParams) -> np.ndarray:
    """Filter a signal x (T, ...) sampled at times t (T,) seconds, causally. The speed that
    raises the cutoff is the norm of the (filtered) derivative over the last axis: a point's
    speed for (T, N, 3) positions, a quaternion's for (T, N, 4)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    out[0] = x[0]
    dx = np.zeros_like(x[0])

    def alpha(fc: np.ndarray | float, dt: float) -> np.ndarray:
        tau = 1.0 / (2.0 * math.pi * np.asarray(fc))
        return 1.0 / (1.0 + tau / dt)

    for i in range(1, len(x)):
        dt = float(t[i] - t[i - 1])
        if dt <= 0:
            raise ValueError("times must increase")
        raw = (x[i] - out[i - 1]) / dt
        dx = dx + alpha(p.d_cutoff, dt) * (raw - dx)
        speed = np.linalg.norm(dx, axis=-1, keepdims=True)
        a = alpha(p.min_cutoff + p.beta * speed, dt)
        out[i] = out[i - 1] + a * (x[i] - out[i - 1])
    return out


def continuous_quaternions(rotmats: np.ndarray) -> np.ndarray:
    """(T, J, 3, 3) -> (T, J, 4) unit quaternions (x, y, z, w), each on the hemisphere of the
    previous frame's (q and -q are one rotation; the sign is chosen so consecutive ones agree)."""
    import roma

    q = roma.rotmat_to_unitquat(torch.as_tensor(np.asarray(rotmats, dtype=np.float64))).numpy()
    for i in range(1, len(q)):
        flip = np.sum(q[i] * q[i - 1], axis=-1) < 0
        q[i][flip] *= -1.0
    return q


def _quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    import roma

    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return roma.unitquat_to_rotmat(torch.as_tensor(q)).numpy()


def lag_note(options: SmoothOptions, fps: float) -> dict:
    """What delay the method puts on the motion, in seconds and frames (recorded with the
    tracks; README "Sequences")."""
    if options.method == "none":
        return {"causal": True, "lag_s": 0.0, "lag_frames": 0.0, "note": "per-frame estimates: no smoothing, no lag"}
    if options.method == "fit-window":
        f = options.fit
        return {"causal": False, "lag_s": 0.0, "lag_frames": 0.0,
                "note": f"offline fit of windows of {f.window} frames (overlap {f.overlap}): each frame is fitted "
                        "with the frames before and after it; no lag, but nothing is final before its window ends"}
    worst = {k: 1.0 / (2 * math.pi * p.min_cutoff) for k, p in (("rotation", options.rotation),
                                                                  ("translation", options.translation))}
    lag = max(worst.values())
    return {"causal": True, "lag_s": round(lag, 4), "lag_frames": round(lag * fps, 2),
            "lag_s_by_part": {k: round(v, 4) for k, v in worst.items()},
            "note": "One-Euro: a slow motion comes out up to 1/(2 pi min_cutoff) s late (the figures here); faster "
                    "motion raises the cutoff (min_cutoff + beta * speed) and shortens the lag"}


def _shape(track: Track) -> tuple[np.ndarray, bool]:
    obs = track.observations
    applied = all(o.betas_applied for o in obs)
    n = max(len(o.betas) for o in obs)
    if not applied:
        return np.zeros(n), False
    b = np.stack([np.pad(np.asarray(o.betas, dtype=np.float64), (0, n - len(o.betas))) for o in obs])
    return np.median(b, axis=0), True


def _joints(kb: KeypointBody, rot: np.ndarray, betas: np.ndarray) -> np.ndarray:
    b = np.zeros(kb.num_betas)
    n = min(len(betas), kb.num_betas)
    b[:n] = betas[:n]
    with torch.no_grad():
        _, j = kb(torch.as_tensor(rot), torch.as_tensor(np.broadcast_to(b, (len(rot), kb.num_betas)).copy()))
    return j.numpy()


def _targets(track: Track) -> TemporalTargets | None:
    obs = track.observations
    if not any(o.landmarks is not None for o in obs):
        return None
    T = len(obs)
    kp2d, c2, kp3d, c3 = np.zeros((T, 17, 2)), np.zeros((T, 17)), np.zeros((T, 17, 3)), np.zeros((T, 17))
    box = np.array([o.box_size for o in obs], dtype=np.float64)
    for i, o in enumerate(obs):
        lm = o.landmarks
        if lm is None:
            continue
        kp2d[i], c2[i] = lm["kp2d"], lm["conf2d"]
        kp3d[i], c3[i] = lm["kp3d"], lm.get("conf3d", lm["conf2d"])
        box[i] = float(lm.get("box_size", box[i]))
    return TemporalTargets(kp2d, c2, kp3d, c3, box, np.stack([o.K for o in obs]))


def smooth_track(track: Track, body: BodyModel | KeypointBody, fps: float,
                 options: SmoothOptions | None = None) -> SmoothedTrack:
    """The track's motion by ``options.method`` (module docstring). ``fps``: frames per
    second of the source frame indices (a video's frame rate)."""
    o = options or SmoothOptions()
    if not track.observations:
        raise ValueError(f"{track.track_id}: no observations")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    kb = (body if isinstance(body, KeypointBody) else KeypointBody(body)).double()
    obs = track.observations
    rot = np.stack([o_.rotmats for o_ in obs]).astype(np.float64)
    tr = np.stack([o_.transl for o_ in obs]).astype(np.float64)
    betas, applied = _shape(track)
    # one shape per track: keep every frame's pelvis where its estimate put it
    j_own = np.stack([o_.joints_cam for o_ in obs]) - tr[:, None]
    j_new = _joints(kb, rot, betas if applied else np.zeros_like(betas))
    tr = tr + j_own[:, 0] - j_new[:, 0]
    frames = track.frames
    t = frames.astype(np.float64) / float(fps)
    details: dict = {}
    if o.method == "one-euro" and len(obs) > 1:
        q = one_euro_filter(continuous_quaternions(rot), t, o.rotation)
        rot = _quat_to_rotmat(q)
        tr = one_euro_filter(tr[:, None], t, o.translation)[:, 0]
    elif o.method == "fit-window" and len(obs) > 2:
        res = fit_window(kb, rot, tr, betas if applied else np.zeros_like(betas), frames.astype(np.float64),
                         _targets(track), o.fit)
        rot, tr = res.rotmats, res.transl
        details = {"windows": res.windows, "solver_evaluations": res.nfev, "seconds": round(res.seconds, 3),
                   "landmarks": any(o_.landmarks is not None for o_ in obs)}
    joints = _joints(kb, rot, betas if applied else np.zeros_like(betas)) + tr[:, None]
    return SmoothedTrack(track.track_id, frames, track.steps, track.persons, rot, tr, joints, betas, applied,
                         o.method, details)
