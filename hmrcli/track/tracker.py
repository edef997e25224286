"""Frame-to-frame assignment of persons to tracks (Hungarian matching with gating and re-identification).

For every frame, in order, second estimates of one body are dropped first
(:func:`drop_duplicates`); then each open track predicts where its person is now: its last box
and projected joints moved by its velocity (pixels per step: the least-squares slope of
its box centre over its last ``VELOCITY_SPAN`` steps, times the steps since it was last seen) and its last root depth. The cost of
giving detection d to track k is

    cost = (1 - IoU(predicted box, box_d))
         + w_joints * mean_j |predicted joint_j - joint_dj| / size     (size: sqrt(box area), pixels)
         + w_depth  * |z_root_pred - z_root_d| / z_root_pred           (relative, camera frame)

``scipy.optimize.linear_sum_assignment`` picks the assignment of least total cost; a pair
is allowed only when the predicted and the detected boxes overlap or the joints are within
``max_joint_dist`` box sizes, and its cost is below ``max_cost``. A detection left over
starts a new track; a track left over stays open for ``max_gap`` steps (a person hidden
behind another one for a moment gets its id back), then is closed.

A track seen in fewer than ``min_frames`` steps is tentative: in every frame the confirmed
tracks choose first, the tentative ones share what is left (the matching cascade of SORT /
DeepSORT), so a spurious estimate -- a mixed body where one person hides another, a
detector's one-frame mistake -- cannot take a real person's next detection. A track still
shorter than ``min_frames`` at the end is not returned as a track but set aside (the caller
records it: ``sequence.json`` ``short_tracks``). Ids are given to the tracks kept, in the order
in which they start (``track_00``, ``track_01``, ...), ties broken by the person index, so
the same per-frame results always give the same tracks.

Why hand-written: the assignment itself is scipy's; the cost is the part specific to the
records here (boxes, projected body joints, camera depth), a few lines that general
multi-object trackers (which track boxes only) do not offer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from hmrcli.geometry import box_iou_xyxy
from hmrcli.track.types import Observation, Track, track_name

__all__ = ["TrackerOptions", "track_people", "pair_cost", "drop_duplicates", "estimate_box"]

_INFEASIBLE = 1e6
#: steps over which a track's velocity is measured (a least-squares slope)
VELOCITY_SPAN = 6


def estimate_box(joints_2d: np.ndarray, pad: float = 0.15) -> np.ndarray:
    """The box (x1, y1, x2, y2) around projected joints, grown by ``pad`` of its height on
    every side (the joints lie inside the body's outline: head top and feet are beyond them)."""
    lo, hi = joints_2d.min(0), joints_2d.max(0)
    m = pad * max(hi[1] - lo[1], hi[0] - lo[0], 1.0)
    return np.concatenate([lo - m, hi + m])


@dataclass(frozen=True)
class TrackerOptions:
    """``max_gap``: steps a track may go unseen and still be continued (0: never);
    ``w_joints``, ``w_depth``: weights of the joint and depth terms; ``max_cost``: pairs
    dearer than this are never matched; ``max_joint_dist``: box sizes within which
    non-overlapping boxes may still match (fast motion); ``duplicate_dist``: two estimates of
    one frame whose projected joints are closer than this (mean, in box sizes) are one body
    seen twice (:func:`drop_duplicates`); ``min_frames``: a track seen in fewer steps is
    tentative, and set aside when it ends so (1: every track is kept)."""

    max_gap: int = 10
    w_joints: float = 1.0
    w_depth: float = 0.5
    max_cost: float = 1.6
    max_joint_dist: float = 0.75
    duplicate_dist: float = 0.1
    min_frames: int = 3

    def __post_init__(self) -> None:
        if self.max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {self.max_gap}")
        if self.min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {self.min_frames}")


def _root_depth(o: Observation) -> float:
    return float(max(o.joints_cam[0, 2], 1e-3))


class _Open:
    """A track being built: its observations and velocity (pixels / step)."""

    def __init__(self, index: int, obs: Observation) -> None:
        self.track = Track(track_name(index), [obs])
        self.vel = np.zeros(2)

    @property
    def last(self) -> Observation:
        return self.track.observations[-1]

    def add(self, obs: Observation) -> None:
        self.track.observations.append(obs)
        # velocity: the slope of the box centres over the last VELOCITY_SPAN steps (one step's
        # difference is as noisy as the estimates, and a gap multiplies it)
        recent = [o for o in self.track.observations if o.step >= obs.step - VELOCITY_SPAN]
        if len(recent) >= 2:
            s = np.array([o.step for o in recent], dtype=np.float64)
            c = np.stack([0.5 * (o.box_xyxy[:2] + o.box_xyxy[2:]) for o in recent])
            s = s - s.mean()
            self.vel = (s[:, None] * (c - c.mean(0))).sum(0) / max(float((s ** 2).sum()), 1e-9)

    def predict(self, step: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Predicted box (4,), joints (24, 2) pixels and root depth (metres) at ``step``."""
        shift = self.vel * (step - self.last.step)
        return self.last.box_xyxy + np.tile(shift, 2), self.last.joints_2d + shift, _root_depth(self.last)


def pair_cost(box_pred: np.ndarray, joints_pred: np.ndarray, z_pred: float, det: Observation,
              opts: TrackerOptions) -> float:
    """The cost of one (track prediction, detection) pair; ``_INFEASIBLE`` when gated out."""
    iou = float(box_iou_xyxy(box_pred, det.box_xyxy))
    w, h = box_pred[2] - box_pred[0], box_pred[3] - box_pred[1]
    size = max(np.sqrt(max(w, 1.0) * max(h, 1.0)), det.box_size) if w > 0 and h > 0 else det.box_size
    dj = float(np.mean(np.linalg.norm(joints_pred - det.joints_2d, axis=-1))) / size
    if iou <= 0.0 and dj > opts.max_joint_dist:
        return _INFEASIBLE
    dz = abs(_root_depth(det) - z_pred) / max(z_pred, 1e-3)
    cost = (1.0 - iou) + opts.w_joints * dj + opts.w_depth * dz
    return cost if cost < opts.max_cost else _INFEASIBLE


def drop_duplicates(dets: list[Observation], opts: TrackerOptions) -> tuple[list[Observation],
                                                                           list[tuple[Observation, Observation]]]:
    """One frame's observations without the second estimates of one body: of two whose
    projected joints lie within ``duplicate_dist`` box sizes of each other (an engine that
    found the neighbour in an overlapping box), the one with fewer joints inside its own
    detector box goes (ties: the higher person index). Returns (kept, [(dropped, kept for it)])."""
    order = sorted(dets, key=lambda o: (-o.in_box, o.person))
    kept: list[Observation] = []
    dropped = []
    for o in order:
        twin = next((k for k in kept if float(np.mean(np.linalg.norm(k.joints_2d - o.joints_2d, axis=-1)))
                     < opts.duplicate_dist * max(k.box_size, o.box_size)), None)
        if twin is None:
            kept.append(o)
        else:
            dropped.append((o, twin))
    return sorted(kept, key=lambda o: o.person), dropped


def _match(open_: list[_Open], dets: list[Observation], free: list[int], s: int,
           opts: TrackerOptions) -> list[int]:
    """Give the detections ``free`` (indices into ``dets``) to the tracks ``open_`` (least total
    cost); returns the detections still free."""
    if not open_ or not free:
        return free
    cost = np.full((len(open_), len(free)), _INFEASIBLE)
    for i, t in enumerate(open_):
        bp, jp, zp = t.predict(s)
        for c, j in enumerate(free):
            cost[i, c] = pair_cost(bp, jp, zp, dets[j], opts)
    rows, cols = linear_sum_assignment(cost)
    taken = set()
    for i, c in zip(rows, cols):
        if cost[i, c] < _INFEASIBLE:
            open_[i].add(dets[free[c]])
            taken.add(free[c])
    return [j for j in free if j not in taken]


def track_people(frames: list[list[Observation]], options: TrackerOptions | None = None,
                 dropped: list[tuple[Observation, Observation]] | None = None,
                 short: list[list[Observation]] | None = None) -> list[Track]:
    """Link the observations of a sequence into tracks (see the module docstring).

    ``frames[s]``: the observations of step s (any order; all with ``step == s``). Returns
    the tracks in id order; every observation is in exactly one track, except second
    estimates of one body in a frame (:func:`drop_duplicates`), which are appended to
    ``dropped`` (with the observation kept for them), and the observations of tracks shorter
    than ``min_frames``, appended to ``short`` (one list per such track, in frame order), when
    those lists are given."""
    opts = options or TrackerOptions()
    started: list[_Open] = []  # every track, in the order it started
    open_: list[_Open] = []
    for s, dets in enumerate(frames):
        for o in dets:
            if o.step != s:
                raise ValueError(f"observation of person {o.person} has step {o.step}, expected {s}")
        dets, twins = drop_duplicates(dets, opts)
        if dropped is not None:
            dropped.extend(twins)
        open_ = [t for t in open_ if s - t.last.step - 1 <= opts.max_gap]  # unseen longer: closed
        # the cascade: confirmed tracks first, tentative ones from what is left
        confirmed = [t for t in open_ if len(t.track.observations) >= opts.min_frames]
        tentative = [t for t in open_ if len(t.track.observations) < opts.min_frames]
        free = _match(confirmed, dets, list(range(len(dets))), s, opts)
        free = _match(tentative, dets, free, s, opts)
        for j in free:
            started.append(_Open(len(started), dets[j]))
            open_.append(started[-1])
    kept = [t.track for t in started if len(t.track.observations) >= opts.min_frames]
    if short is not None:
        short.extend(t.track.observations for t in started if len(t.track.observations) < opts.min_frames)
    return [Track(track_name(n), t.observations) for n, t in enumerate(kept)]
