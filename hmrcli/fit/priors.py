"""Pose and shape priors for fitting, without a learned prior file.

SMPLify's learned GMM pose prior is not available offline (it ships with the licence-gated
SMPLify release), so plausibility comes from hand-set, documented terms:

* **joint-angle limits** (:data:`JOINT_LIMITS`, from :mod:`hmrcli.body.pose_limits`): per joint and per axis-angle component a
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

import torch

from hmrcli.body.pose_limits import JOINT_LIMITS, POSE_MEAN, sample_plausible_pose

__all__ = ["BENDS", "JOINT_LIMITS", "POSE_MEAN", "bend_penalty", "limit_penalty", "pose_l2", "sample_plausible_pose",
           "shape_l2"]

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
