"""The records tracking and smoothing work on: one person in one frame, and a track."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Observation", "Track", "track_name"]


@dataclass
class Observation:
    """One reconstructed person in one frame of a sequence.

    ``step``: the frame's position in the sequence (0, 1, 2, ...); ``frame``: its source
    frame index (a video's frame number; with ``--frame-stride N`` steps are N frames
    apart); ``person``: the person's index KK among the frame's detections (``person_KK``
    files). Units: pixels for ``box_xyxy`` (x1, y1, x2, y2) and ``joints_2d`` (24, 2);
    metres for ``joints_cam`` (24, 3) in the OpenCV camera frame and ``transl`` (3,)
    (X_camera = X_model + transl); ``rotmats`` (24, 3, 3) joint rotations with joint 0 the
    global orientation in the camera frame; ``betas`` (K,) the body model's shape (its own
    space) and whether they were applied; ``K`` (3, 3) pixels; ``det_box_xyxy``: the box the
    detector gave (``box_xyxy`` is the estimate's own: around its projected joints, so a
    person estimated from another person's box is tracked where it is). ``landmarks``: the 2D/3D
    landmarks the estimate was fitted to when the engine used them (``kp2d`` (17, 2) pixels,
    ``conf2d`` (17,), ``kp3d`` (17, 3) metres camera-aligned, ``conf3d`` (17,), ``box_size``
    pixels), else None."""

    step: int
    frame: int
    person: int
    box_xyxy: np.ndarray
    joints_2d: np.ndarray
    joints_cam: np.ndarray
    rotmats: np.ndarray
    betas: np.ndarray
    betas_applied: bool
    transl: np.ndarray
    K: np.ndarray
    landmarks: dict[str, np.ndarray] | None = None
    det_box_xyxy: np.ndarray | None = None

    @property
    def in_box(self) -> float:
        """Fraction of the projected joints inside the detector's box (1 when none is known):
        an engine asked to reconstruct the person in a box can lock onto a neighbour whose
        body reaches into it; its joints then lie outside the box."""
        if self.det_box_xyxy is None:
            return 1.0
        b = self.det_box_xyxy
        j = self.joints_2d
        return float(np.mean((j[:, 0] >= b[0]) & (j[:, 0] <= b[2]) & (j[:, 1] >= b[1]) & (j[:, 1] <= b[3])))

    @property
    def box_size(self) -> float:
        """sqrt(width * height) of the box, pixels (at least 1)."""
        w, h = self.box_xyxy[2] - self.box_xyxy[0], self.box_xyxy[3] - self.box_xyxy[1]
        return float(max(np.sqrt(max(w, 0.0) * max(h, 0.0)), 1.0))


def track_name(index: int) -> str:
    """``track_00``, ``track_01``, ..., ``track_100``: the id of the index-th track."""
    return f"track_{index:02d}"


@dataclass
class Track:
    """One person followed through a sequence: ``track_id`` (``track_03``) and its
    observations in frame order (one per step at most; steps may have gaps, none longer
    than the tracker's ``max_gap``)."""

    track_id: str
    observations: list[Observation] = field(default_factory=list)

    @property
    def steps(self) -> np.ndarray:
        return np.array([o.step for o in self.observations], dtype=np.int64)

    @property
    def frames(self) -> np.ndarray:
        return np.array([o.frame for o in self.observations], dtype=np.int64)

    @property
    def persons(self) -> list[int]:
        return [o.person for o in self.observations]

    def gaps(self) -> list[tuple[int, int]]:
        """(first missing step, steps missing) of every hole in the track."""
        s = self.steps
        return [(int(a) + 1, int(b - a - 1)) for a, b in zip(s[:-1], s[1:]) if b - a > 1]
