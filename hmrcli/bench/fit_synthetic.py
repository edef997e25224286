"""Synthetic fitting problems with known answers (the fitting engine's checks).

:func:`synthetic_people` poses the body model with random plausible poses
(:func:`hmrcli.fit.priors.sample_plausible_pose`: within the joint limits around a relaxed
standing pose) and shapes (betas ~ N(0, 1) clipped to +-2), turns it to a random heading
(+-180 degrees about the vertical, +-6 degrees tilt), places it at a random distance
(default 3-10 m) so that its hips project into the middle 60 % of a 1920x1080 image with
focal length = image diagonal, and observes its COCO-17 keypoints: 2D with Gaussian pixel
noise (default 2 px) and 3D (root-relative, camera-aligned) with Gaussian noise (default
2 cm). :func:`evaluate_fit` scores a fit against the truth.

This validates the optimiser and the geometry; it says nothing about BlazePose's accuracy
on photos (for that, see ``benchmarks/fit_multiroi.py``, which renders the bodies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import roma
import torch

from hmrcli import geometry as G
from hmrcli.bench.metrics import mpjpe, pa_mpjpe
from hmrcli.body import BodyModel
from hmrcli.fit.optimize import FitResult, FitTargets
from hmrcli.fit.priors import sample_plausible_pose

__all__ = ["SyntheticPeople", "synthetic_people", "evaluate_fit"]


@dataclass
class SyntheticPeople:
    """Ground truth and noisy observations of n bodies (metres, pixels).

    rotmats (n, 24, 3, 3) (joint 0: camera-frame orientation); betas (n, 10); transl (n, 3)
    (X_camera = body(rotmats, betas) + transl); K (3, 3); image_wh; joints (n, 24, 3) and
    keypoints (n, 17, 3) model frame (before transl); distance (n,) metres from the camera
    centre to the hip midpoint; kp2d (n, 17, 2) noisy pixels; kp2d_true; kp3d (n, 17, 3)
    noisy, root-relative; box_size (n,) pixels (the keypoints' extent x 1.2); targets: the
    :class:`FitTargets` to fit.
    """

    rotmats: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    K: np.ndarray
    image_wh: tuple[int, int]
    joints: np.ndarray
    keypoints: np.ndarray
    vertices: np.ndarray
    distance: np.ndarray
    kp2d: np.ndarray
    kp2d_true: np.ndarray
    kp3d: np.ndarray
    box_size: np.ndarray
    targets: FitTargets


def synthetic_people(body: BodyModel, n: int, rng: np.random.Generator, image_wh: tuple[int, int] = (1920, 1080),
                     distance: tuple[float, float] = (3.0, 10.0), noise2d: float = 2.0, noise3d: float = 0.02,
                     spread: float = 0.5) -> SyntheticPeople:
    """n random bodies observed as described in the module docstring."""
    w, h = image_wh
    f = float(G.default_focal(w, h))
    K = G.intrinsics(f, w, h)
    body_pose = sample_plausible_pose(n, rng, spread)
    heading = G.axis_rotation(1, rng.uniform(-np.pi, np.pi, n))
    tilt = G.axis_rotation(0, rng.uniform(-0.1, 0.1, n)) @ G.axis_rotation(2, rng.uniform(-0.1, 0.1, n))
    flip = np.diag([1.0, -1.0, -1.0])  # body +Y up, facing +Z -> camera y down, facing the camera
    glob = flip @ tilt @ heading
    rot = np.concatenate([glob[:, None], roma.rotvec_to_rotmat(torch.from_numpy(body_pose)).numpy()], 1)
    betas = np.clip(rng.normal(size=(n, 10)), -2, 2)
    out = body(torch.from_numpy(rot), torch.from_numpy(betas))
    kp = out.keypoints_coco.numpy()
    root = 0.5 * (kp[:, 11] + kp[:, 12])
    dist = rng.uniform(*distance, n)
    u = rng.uniform(0.2, 0.8, n) * w
    v = rng.uniform(0.2, 0.8, n) * h
    ray = np.stack([(u - w / 2) / f, (v - h / 2) / f, np.ones(n)], 1)
    ray /= np.linalg.norm(ray, axis=1, keepdims=True)
    transl = ray * dist[:, None] - root
    pc = kp + transl[:, None]
    uv = pc[..., :2] / pc[..., 2:] * f + K[:2, 2]
    kp2d = uv + rng.normal(scale=noise2d, size=uv.shape)
    kp3d = kp - root[:, None] + rng.normal(scale=noise3d, size=kp.shape)
    box = (uv.max(1) - uv.min(1)).max(1) * 1.2
    targets = FitTargets(kp2d=kp2d, conf2d=np.ones((n, 17)), K=np.tile(K, (n, 1, 1)), box_size=box,
                         kp3d=kp3d, conf3d=np.ones((n, 17)))
    return SyntheticPeople(rot, betas, transl, K, (w, h), out.joints.numpy(), kp, out.vertices.numpy(), dist,
                           kp2d, uv, kp3d, box, targets)


def evaluate_fit(body: BodyModel, people: SyntheticPeople, fit: FitResult) -> dict[str, np.ndarray]:
    """Per body: ``pa_mpjpe_mm`` (24 skeleton joints, similarity Procrustes), ``pa_kp_mm``
    (the 17 keypoints), ``mpjpe_mm`` (24 joints, pelvis-aligned, camera orientation),
    ``distance_err`` (relative error of the camera-to-hips distance), ``reproj_px``."""
    out = body(torch.from_numpy(fit.rotmats), torch.from_numpy(fit.betas))
    j, kp = out.joints.numpy(), out.keypoints_coco.numpy()
    root = 0.5 * (kp[:, 11] + kp[:, 12])
    d_fit = np.linalg.norm(root + fit.transl, axis=1)
    return {
        "pa_mpjpe_mm": pa_mpjpe(j, people.joints),
        "pa_kp_mm": pa_mpjpe(kp, people.keypoints),
        "mpjpe_mm": mpjpe(j - j[:, :1], people.joints - people.joints[:, :1]),
        "distance_err": (d_fit - people.distance) / people.distance,
        "reproj_px": fit.reproj_px,
    }
