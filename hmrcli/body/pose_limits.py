"""Anatomical joint-angle ranges and a relaxed standing pose for SMPL-layout bodies.

Used by the fitting priors (:mod:`hmrcli.fit.priors`) and by the synthetic data generators
to draw plausible random poses. Angles are axis-angle components in radians, in each
joint's local frame of the SMPL-layout T-pose rest pose (x: the body's left, y: up,
z: forward). The components of an axis-angle vector are not Euler angles, but for the
mostly single-axis rotations of real joints they are close; the ranges are generous: they
exclude the impossible (knees bending forwards, elbows backwards, heads turned 180
degrees), not the unusual. Both body models hmrcli ships/loads share this layout.
"""

from __future__ import annotations

import numpy as np

__all__ = ["JOINT_LIMITS", "POSE_MEAN", "sample_plausible_pose"]

# (x_min, x_max, y_min, y_max, z_min, z_max) radians, for joints 1..23 (SMPL order).
_LIMITS: dict[int, tuple[float, float, float, float, float, float]] = {
    1: (-2.6, 0.8, -0.9, 0.9, -0.5, 1.4),    # left hip: flexion forward is -x, abduction +z
    2: (-2.6, 0.8, -0.9, 0.9, -1.4, 0.5),    # right hip
    3: (-0.6, 1.0, -0.6, 0.6, -0.5, 0.5),    # spine1
    4: (-0.1, 2.7, -0.4, 0.4, -0.3, 0.3),    # left knee: flexion +x only
    5: (-0.1, 2.7, -0.4, 0.4, -0.3, 0.3),    # right knee
    6: (-0.5, 0.6, -0.5, 0.5, -0.4, 0.4),    # spine2
    7: (-0.8, 1.0, -0.6, 0.6, -0.5, 0.5),    # left ankle
    8: (-0.8, 1.0, -0.6, 0.6, -0.5, 0.5),    # right ankle
    9: (-0.5, 0.6, -0.5, 0.5, -0.4, 0.4),    # spine3
    10: (-0.6, 0.6, -0.4, 0.4, -0.4, 0.4),   # left foot
    11: (-0.6, 0.6, -0.4, 0.4, -0.4, 0.4),   # right foot
    12: (-0.8, 0.9, -1.0, 1.0, -0.6, 0.6),   # neck
    13: (-0.5, 0.5, -0.6, 0.6, -0.6, 0.6),   # left collar
    14: (-0.5, 0.5, -0.6, 0.6, -0.6, 0.6),   # right collar
    15: (-0.7, 0.8, -1.0, 1.0, -0.6, 0.6),   # head
    16: (-2.0, 2.0, -2.4, 1.6, -1.7, 1.6),   # left shoulder
    17: (-2.0, 2.0, -1.6, 2.4, -1.6, 1.7),   # right shoulder
    18: (-0.9, 0.9, -2.8, 0.15, -0.6, 0.6),  # left elbow: flexion -y only
    19: (-0.9, 0.9, -0.15, 2.8, -0.6, 0.6),  # right elbow: flexion +y only
    20: (-1.6, 1.6, -0.8, 0.8, -1.3, 1.3),   # left wrist
    21: (-1.6, 1.6, -0.8, 0.8, -1.3, 1.3),   # right wrist
    22: (-0.5, 0.5, -0.4, 0.4, -0.5, 0.5),   # left hand
    23: (-0.5, 0.5, -0.4, 0.4, -0.5, 0.5),   # right hand
}
#: (23, 3, 2) [min, max] per body joint (1..23) and axis-angle component, radians.
JOINT_LIMITS = np.array([[[_LIMITS[j][2 * a], _LIMITS[j][2 * a + 1]] for a in range(3)] for j in range(1, 24)])
#: (23, 3) axis-angle of the relaxed standing pose the pose prior pulls towards.
POSE_MEAN = np.zeros((23, 3))
POSE_MEAN[16 - 1] = (0.0, 0.0, -1.05)   # left shoulder: arm down (rotation about -z)
POSE_MEAN[17 - 1] = (0.0, 0.0, 1.05)    # right shoulder
POSE_MEAN[18 - 1] = (0.0, -0.25, 0.0)   # left elbow: slight flexion
POSE_MEAN[19 - 1] = (0.0, 0.25, 0.0)    # right elbow
POSE_MEAN[4 - 1] = (0.1, 0.0, 0.0)      # knees: slight flexion
POSE_MEAN[5 - 1] = (0.1, 0.0, 0.0)

def sample_plausible_pose(n: int, rng: np.random.Generator, spread: float = 0.5) -> np.ndarray:
    """(n, 23, 3) random body poses: :data:`POSE_MEAN` plus, per axis-angle component, a
    uniform offset in a ``spread`` fraction of its joint-limit range (results clipped to the
    range). Used by the synthetic checks; not a learned prior."""
    lo, hi = JOINT_LIMITS[..., 0], JOINT_LIMITS[..., 1]
    u = POSE_MEAN + rng.uniform(lo * spread, hi * spread, size=(n, 23, 3))
    return np.clip(u, lo, hi)
