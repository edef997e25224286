"""Pose and shape priors for fitting, without a learned prior file.

SMPLify's learned GMM pose prior is not available offline (it ships with the licence-gated
SMPLify release), so plausibility comes from hand-set, documented terms:

* **joint-angle limits** (:data:`JOINT_LIMITS`): per joint and per axis-angle component a
  range in radians, in the joint's local frame of the SMPL-layout rest pose (x: the body's
  left, y: up, z: forward). The components of an axis-angle vector are not Euler angles,
  but for the mostly single-axis rotations of real joints they are close, and the limits
  are generous: they exclude the impossible (knees bending forward, elbows backward,
  heads turned 180 degrees), not the unusual. Penalty: squared excess beyond the range.
* **bending penalties** (SMPLify's): ``exp`` penalties on the knee and elbow components
  that would bend them the wrong way (``BENDS``).
* **pose magnitude**: squared distance of the 23 body joint rotations from a relaxed
  standing pose (:data:`POSE_MEAN`: arms hanging about 60 degrees below horizontal, elbows
  and knees slightly bent; the rest pose itself is a T-pose). It pulls the joints no
  keypoint observes -- spine, collars, feet, hands, limbs out of the picture -- towards
  that pose.
* **shape**: squared norm of the betas (a standard-normal shape space).

Both body models hmrcli ships/loads are in the SMPL layout with a T-pose-like rest pose,
so the same table applies to both.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["POSE_MEAN", "JOINT_LIMITS", "BENDS", "limit_penalty", "bend_penalty", "pose_l2", "shape_l2", "sample_plausible_pose"]

_BIG = 3.2
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
#: SMPLify's wrong-way bending terms: (body joint index 1..23, component, sign): the penalty
#: is exp(sign * theta) squared, large when the joint bends the wrong way.
BENDS: tuple[tuple[int, int, float], ...] = ((18, 1, 1.0), (19, 1, -1.0), (4, 0, -1.0), (5, 0, -1.0))


def limit_penalty(body_pose: torch.Tensor) -> torch.Tensor:
    """(B, 23, 3) axis-angle -> (B,) sum of squared excess beyond :data:`JOINT_LIMITS`."""
    lim = torch.as_tensor(JOINT_LIMITS, dtype=body_pose.dtype, device=body_pose.device)
    lo, hi = lim[..., 0], lim[..., 1]
    ex = torch.relu(lo - body_pose) + torch.relu(body_pose - hi)
    return (ex ** 2).sum(dim=(1, 2))


def bend_penalty(body_pose: torch.Tensor) -> torch.Tensor:
    """(B, 23, 3) axis-angle -> (B,) SMPLify's exp bending penalty on elbows and knees."""
    terms = [torch.exp(s * body_pose[:, j - 1, c]) ** 2 for j, c, s in BENDS]
    return torch.stack(terms, dim=1).sum(dim=1)


def pose_l2(body_pose: torch.Tensor) -> torch.Tensor:
    """(B, 23, 3) -> (B,) squared distance from :data:`POSE_MEAN`."""
    mean = torch.as_tensor(POSE_MEAN, dtype=body_pose.dtype, device=body_pose.device)
    return ((body_pose - mean) ** 2).sum(dim=(1, 2))


def shape_l2(betas: torch.Tensor) -> torch.Tensor:
    """(B, K) -> (B,) squared norm."""
    return (betas ** 2).sum(dim=1)


def sample_plausible_pose(n: int, rng: np.random.Generator, spread: float = 0.5) -> np.ndarray:
    """(n, 23, 3) random body poses: :data:`POSE_MEAN` plus, per axis-angle component, a
    uniform offset in a ``spread`` fraction of its joint-limit range (results clipped to the
    range). Used by the synthetic checks; not a learned prior."""
    lo, hi = JOINT_LIMITS[..., 0], JOINT_LIMITS[..., 1]
    u = POSE_MEAN + rng.uniform(lo * spread, hi * spread, size=(n, 23, 3))
    return np.clip(u, lo, hi)
