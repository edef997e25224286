"""Training data: SPIN/CLIFF ``.npz`` datasets -> fixed 5-RoI crops, box information and targets.

Item dict (``SpinDataset[i]``; every value a torch tensor except ``imgname``)
==============================================================================
``M`` = number of RoIs (1..5), ``h x w`` = crop size (256x192 "rect", 224x224 "square"),
``J = 24`` keypoints/joints in SPIN's order (:data:`SPIN24_NAMES`).  All image quantities
refer to the *augmented full image* (see "Augmentation" below; without augmentation it is
the image file itself).  Camera frame: OpenCV (x right, y down, z forward), metres.

=====================  ===============  =======  ==================================================
key                    shape            dtype    meaning
=====================  ===============  =======  ==================================================
``img``                (M, 3, h, w)     float32  RGB crops of the M RoIs, ImageNet-normalised
                                                 (``uint8`` 0..255 when ``normalize=False``)
``bbox_info``          (M, 3)           float32  CLIFF box information of each RoI (docs/method.md §3)
                                                 with this sample's focal length
``rois``               (M, 3)           float32  RoI boxes ``(cx, cy, b)``, full-image px; row 0 is
                                                 the person box (after box jitter)
``affines``            (M, 2, 3)        float32  full-image px -> crop px of each RoI
                                                 (``crop_affine``); map projected points with them
``img_wh``             (2,)             float32  ``(W, H)`` px
``focal``              ()               float32  focal length px (``focal_l``/``focal_length`` key,
                                                 else ``sqrt(W^2 + H^2)``)
``K``                  (3, 3)           float32  ``[[f, 0, W/2], [0, f, H/2], [0, 0, 1]]``
``kp2d_full``          (J, 3)           float32  2D keypoints ``(u, v, conf)``, full-image px
``kp2d_crop``          (M, J, 3)        float32  the same keypoints in each RoI's crop,
                                                 normalised per axis: ``(2 x'/w - 1, 2 y'/h - 1,
                                                 conf)`` with ``(x', y') = affines[m] @ (u, v, 1)``
                                                 (crop spans [-1, 1]; the authors' loss space)
``joints3d``           (J, 4)           float32  3D joints ``(X, Y, Z, conf)``, metres, camera
                                                 frame as stored in the file (``S``; not centred)
``joints_smpl24``      (24, 4)          float32  body-model skeleton joints (SMPL order), camera
                                                 frame, metres, conf column = ``has_joints_smpl``
``pose``               (72,)            float32  axis-angle (rad), SMPL joint order, joint 0 = global
                                                 orientation in the camera frame
``rotmats``            (24, 3, 3)       float32  the same as rotation matrices
``betas``              (10,)            float32  shape coefficients (space: ``dataset.betas_space``)
``cam_t``              (3,)             float32  body translation, camera frame, metres:
                                                 ``X_cam = body(pose, betas) + cam_t``
``has_smpl``           ()               float32  1 when pose/betas are ground truth
``has_3d``             ()               float32  1 when ``joints3d`` has a confident joint
``has_cam_t``          ()               float32  1 when ``cam_t`` is known
``has_joints_smpl``    ()               float32  1 when ``joints_smpl24`` is known
``gender``             ()               int64    0 neutral, 1 male, 2 female
``person_id``          ()               int64    unique per person row (MixedDataset: across all
                                                 datasets); same id => same person (two draws of
                                                 one row in a batch share it: positives)
``image_id``           ()               int64    unique per image file; RoIs of rows with another
                                                 ``person_id`` are contrastive negatives
``dataset``            ()               int64    index of the dataset in a :class:`MixedDataset` (0)
``index``              ()               int64    row of the ``.npz`` file
``aug_affine``         (2, 3)           float32  original image px -> augmented image px
``aug_flip``           ()               float32  1 if flipped
``aug_rot``            ()               float32  in-plane rotation applied, degrees
``aug_scale``          ()               float32  box size factor applied
``imgname``            str                       image path relative to the image root
=====================  ===============  =======  ==================================================

:func:`collate` stacks these into a batch dict: each tensor gains a leading ``B``
(``img`` (B, M, 3, h, w), ``bbox_info`` (B, M, 3), ``kp2d_crop`` (B, M, J, 3), ``has_smpl``
(B,), ...) and ``imgname`` becomes a list of B strings.

Unknown fields are zero with their ``has_*`` flag 0 (confidence 0 for keypoints).  A body
model's output maps to the 24 SPIN joints with :func:`spin24_from_body`
(:data:`SPIN24_BODY_CONF` says which of them it defines); project with ``K`` and map into
the crops with :func:`points_to_crop` to compare with ``kp2d_crop``.

Input files (SPIN / CLIFF preprocessed ``.npz``)
================================================
One row per person: ``imgname`` (path relative to the image root), ``center`` (N, 2) px,
``scale`` (N,) with box size ``b = 200 scale``; optional ``part`` (N, 24, 3), ``S``
(N, 24, 4), ``pose`` (N, 72), ``shape`` (N, 10), ``has_smpl`` (N,), ``gender``; CLIFF's
``focal_l`` (N,) and ``global_t`` (N, 3) (also read as ``focal_length`` / ``cam_t``); our
``joints_smpl24`` (N, 24, 3) and ``betas_space`` ("smpl" when absent).  The person box
``(cx, cy, b)`` is used for both crop conventions: ``b`` is the square side ("square") or the
crop height ("rect", width ``0.75 b``).  Files are loaded with ``allow_pickle=False``.

Augmentation (training only, seeded)
====================================
The usual SPIN augmentations, applied so that the *full-image camera stays valid*: the
whole image is transformed by a similarity ``T`` that a camera motion explains, so ``K``,
``focal`` and ``bbox_info`` keep their meaning and every target is transformed with it:

* **rotation** by ``a`` degrees about the principal point ``(W/2, H/2)`` = rotating the
  camera about its optical axis: ``p' = c + R2(a) (p - c)``, ``X' = Rz(a) X``, global
  orientation ``Rz(a) R0``, ``cam_t' = Rz P - J0`` (``P`` the pelvis in the camera frame,
  ``J0 = P - cam_t`` the rest-pose root).  ``R2 = [[cos, -sin], [sin, cos]]`` in image axes
  (y down): positive ``a`` turns +x towards +y.
  (SPIN/CLIFF rotate the crop about the box centre instead, which no full camera explains.)
* **flip** about the principal point's vertical line: ``u' = W - u`` = mirroring the scene
  ``X' = diag(-1, 1, 1) X``; left/right joints swap (:data:`SPIN24_FLIP`, SMPL's
  :data:`SMPL24_FLIP`), the pose is mirrored with :func:`flip_pose`.  (Mirroring about
  ``W/2`` rather than flipping the pixel array keeps the principal point at ``W/2``.)
* **box jitter**: the person box size times ``s`` (SPIN's scale augmentation), optionally its
  centre shifted; this changes only the boxes (and so RoIs, crops, ``bbox_info``,
  ``affines``, ``kp2d_crop``), never the 3D targets or the camera.
* **colour**: per-channel gains in ``[1 - n, 1 + n]`` on all the person's crops (SPIN's
  ``pn``), clipped to 0..255.

The crops are warped straight from the original image with ``affine_m ∘ T`` (one warp, no
resampled intermediate image); pixels from outside the image are 0.  The random numbers of
item ``i`` come from ``numpy.random.default_rng([seed, key])`` (``key`` = the index given
to ``__getitem__``, or the global sample index in a :class:`MixedDataset`), so a run is
reproducible whatever the number of loader workers.

Mixing datasets
===============
:class:`MixedDataset` maps a *global sample index* ``g`` (0, 1, 2, ... for the whole run,
across epochs) to ``(dataset, row)`` deterministically from its seed: epoch
``e = g // epoch_length`` has a fixed count per dataset (ratios, largest remainder), in an
order shuffled by ``(seed, e)``; each dataset's rows are drawn from successive seeded
permutations of all its rows.  Feed it :class:`GlobalIndexSampler` (``start = step *
batch_size``) and a resumed run sees exactly the batches the uninterrupted run would.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from hmrcli import geometry as G
from hmrcli.bench.datasets import DatasetError, load_npz_arrays

__all__ = [
    "SPIN24_NAMES",
    "SPIN24_FLIP",
    "SMPL24_FLIP",
    "SMPL_POSE_FLIP",
    "COCO17_TO_SPIN24",
    "SMPL24_TO_SPIN24",
    "SPIN24_BODY_CONF",
    "AugmentConfig",
    "AugmentParams",
    "Targets",
    "SpinDataset",
    "MixedDataset",
    "GlobalIndexSampler",
    "collate",
    "flip_pose",
    "image_transform",
    "points_to_crop",
    "spin24_from_body",
    "transform_targets",
]

#: SPIN's 24 ground-truth joints (``constants.JOINT_NAMES[25:]``), the order of ``part``/``S``.
SPIN24_NAMES: tuple[str, ...] = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    "neck_lsp", "head_top_lsp", "pelvis_mpii", "thorax_mpii", "spine_h36m", "jaw_h36m",
    "head_h36m", "nose", "left_eye", "right_eye", "left_ear", "right_ear",
)
#: Left/right permutation of the 24 SPIN joints (SPIN ``J24_FLIP_PERM``).
SPIN24_FLIP: tuple[int, ...] = (5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13, 14, 15, 16, 17, 18, 19, 21, 20, 23, 22)
#: Left/right permutation of the 24 SMPL joints (SPIN ``SMPL_JOINTS_FLIP_PERM``).
SMPL24_FLIP: tuple[int, ...] = (0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22)
#: The same permutation on the 72 axis-angle values (SPIN ``SMPL_POSE_FLIP_PERM``).
SMPL_POSE_FLIP: tuple[int, ...] = tuple(3 * j + k for j in SMPL24_FLIP for k in range(3))

#: SPIN24 index of each COCO-17 keypoint (``hmrcli.body.COCO17_NAMES`` order; SPIN's
#: ``J24_TO_JCOCO``): nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles.
COCO17_TO_SPIN24: tuple[int, ...] = (19, 20, 21, 22, 23, 9, 8, 10, 7, 11, 6, 3, 2, 4, 1, 5, 0)
#: SPIN24 joints taken from SMPL skeleton joints (approximations, documented):
#: pelvis (MPII) <- SMPL pelvis (0), neck (LSP) <- SMPL neck (12), head (H36M) <- SMPL head (15).
#: Head top (LSP), thorax (MPII), spine (H36M) and jaw (H36M) have no body-model counterpart
#: here and get confidence 0.
SMPL24_TO_SPIN24: dict[int, int] = {14: 0, 12: 12, 18: 15}


def _body_source_index() -> tuple[np.ndarray, np.ndarray]:
    """Index into ``concat(keypoints_coco (17), joints (24), zero (1))`` per SPIN joint, conf."""
    idx = np.full(24, 17 + 24, dtype=np.int64)
    for k, s in enumerate(COCO17_TO_SPIN24):
        idx[s] = k
    for s, j in SMPL24_TO_SPIN24.items():
        idx[s] = 17 + j
    return idx, (idx < 17 + 24).astype(np.float32)


_BODY_IDX, _BODY_CONF = _body_source_index()
_BODY_CONF.setflags(write=False)
#: (24,) float32: 1 for the SPIN joints :func:`spin24_from_body` defines, 0 for the rest.
SPIN24_BODY_CONF: np.ndarray = _BODY_CONF

_GENDER_CODES = {"n": 0, "neutral": 0, "m": 1, "male": 1, "f": 2, "female": 2}


# -- joint layouts and flips -------------------------------------------------------------------


def spin24_from_body(joints: Any, keypoints_coco: Any) -> Any:
    """SPIN's 24 joints from a body model's output (numpy or torch, any leading dims).

    Args:
        joints: (..., 24, 3) SMPL-order skeleton joints (``BodyOutput.joints``).
        keypoints_coco: (..., 17, 3) COCO-17 keypoints (``BodyOutput.keypoints_coco``).
    Returns:
        (..., 24, 3) points in :data:`SPIN24_NAMES` order, same frame/units as the inputs;
        joints without a counterpart (:data:`SPIN24_BODY_CONF` == 0) are zero.
    """
    if isinstance(joints, torch.Tensor) or isinstance(keypoints_coco, torch.Tensor):
        j = torch.as_tensor(joints)
        kp = torch.as_tensor(keypoints_coco, dtype=j.dtype, device=j.device)
        src = torch.cat([kp, j, torch.zeros_like(j[..., :1, :])], dim=-2)
        return src[..., torch.as_tensor(_BODY_IDX, device=j.device), :]
    j = np.asarray(joints)
    kp = np.asarray(keypoints_coco, dtype=j.dtype)
    src = np.concatenate([kp, j, np.zeros_like(j[..., :1, :])], axis=-2)
    return src[..., _BODY_IDX, :]


def flip_pose(pose: Any) -> Any:
    """Mirror SMPL axis-angle poses (..., 72) through the camera's x = 0 plane (SPIN ``flip_pose``).

    Left/right joints swap (:data:`SMPL_POSE_FLIP`) and the y, z components of every
    axis-angle vector change sign (``R -> M R M`` with ``M = diag(-1, 1, 1)``).  With a
    left/right symmetric body model, ``body(flip_pose(p), betas)`` is the mirror image
    ``x -> -x`` of ``body(p, betas)`` about the root (joints permuted).  Its own inverse.
    """
    perm = list(SMPL_POSE_FLIP)
    if isinstance(pose, torch.Tensor):
        out = pose[..., perm].clone()
    else:
        out = np.array(np.asarray(pose)[..., perm], copy=True)
    out[..., 1::3] *= -1
    out[..., 2::3] *= -1
    return out


def points_to_crop(points: Any, affines: Any, crop_hw: Sequence[int]) -> Any:
    """Full-image points -> every RoI's normalised crop coordinates (the ``kp2d_crop`` space).

    Args:
        points: (..., J, 2) pixels in the (augmented) full image, e.g. joints projected with
            ``K`` and a full camera.
        affines: (..., M, 2, 3) image -> crop pixel affines (the item's ``affines``).
        crop_hw: ``(h, w)`` of the crops.
    Returns:
        (..., M, J, 2) ``(2 x'/w - 1, 2 y'/h - 1)`` with ``(x', y')`` crop pixels: the crop
        spans [-1, 1] on both axes (box centre at 0).  numpy or torch, as the inputs.
    """
    h, w = (float(v) for v in crop_hw)
    if isinstance(points, torch.Tensor) and not isinstance(affines, torch.Tensor):
        affines = torch.as_tensor(affines, dtype=points.dtype, device=points.device)
    if isinstance(affines, torch.Tensor) and not isinstance(points, torch.Tensor):
        points = torch.as_tensor(points, dtype=affines.dtype, device=affines.device)
    xy = G.map_points(points[..., None, :, :], affines)
    scale = xy.new_tensor([2.0 / w, 2.0 / h]) if isinstance(xy, torch.Tensor) else np.array([2.0 / w, 2.0 / h])
    return xy * scale - 1.0


def _aa_to_mat(v: np.ndarray) -> np.ndarray:
    return G.axis_angle_to_rotmat(np.asarray(v, dtype=np.float64))


def _mat_to_aa(r: np.ndarray) -> np.ndarray:
    return G.rotmat_to_axis_angle(np.asarray(r, dtype=np.float64))


# -- augmentation ------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """Training augmentation (defaults: SPIN's); also the ``[data.augment]`` table of the
    training config (:mod:`hmrcli.train.config`).

    enabled: false turns every augmentation off.  flip_prob: probability of a horizontal
    flip (left/right joints swapped).  rot_factor: rotation std in degrees (clipped to
    +-2 rot_factor), applied with probability ``rot_prob`` (SPIN: 0.4), as a camera roll so
    the full camera stays valid.  scale_factor: box size factor ``~ 1 + N(0, scale_factor)``
    clipped to ``1 +- scale_factor``.  shift_factor: box centre shift
    ``~ N(0, shift_factor) * b`` per axis, clipped to +-2 std (0: off, as SPIN).
    noise_factor: per-channel colour gain in ``[1 - noise_factor, 1 + noise_factor]``.
    """

    enabled: bool = True
    flip_prob: float = 0.5
    rot_factor: float = 30.0
    rot_prob: float = 0.4
    scale_factor: float = 0.25
    shift_factor: float = 0.0
    noise_factor: float = 0.4


@dataclass(frozen=True)
class AugmentParams:
    """One draw of :class:`AugmentConfig`: flip, rotation (deg), box scale, shift (x, y) in
    units of ``b``, colour gains (3,)."""

    flip: bool = False
    rot: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @staticmethod
    def draw(cfg: AugmentConfig, rng: np.random.Generator) -> AugmentParams:
        """Draw parameters; always consumes the same random numbers, whatever ``cfg``."""
        u_flip, z_rot, u_rot, z_sc = rng.uniform(), rng.standard_normal(), rng.uniform(), rng.standard_normal()
        z_shift = rng.standard_normal(2)
        gains = rng.uniform(1 - cfg.noise_factor, 1 + cfg.noise_factor, 3)
        rot = float(np.clip(z_rot * cfg.rot_factor, -2 * cfg.rot_factor, 2 * cfg.rot_factor))
        if u_rot >= cfg.rot_prob:
            rot = 0.0
        scale = float(np.clip(1 + z_sc * cfg.scale_factor, 1 - cfg.scale_factor, 1 + cfg.scale_factor))
        shift = np.clip(z_shift, -2, 2) * cfg.shift_factor
        return AugmentParams(bool(u_flip < cfg.flip_prob), rot, scale, (float(shift[0]), float(shift[1])),
                             tuple(float(g) for g in gains))


def image_transform(params: AugmentParams, img_wh: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The similarity of the augmented image and its camera motion.

    Returns:
        ``T`` (2, 3): original image px -> augmented image px (rotation about ``(W/2, H/2)``,
        then the flip ``u -> W - u``); ``L`` (3, 3): the matching camera-frame map
        ``X' = L X`` (``diag(-1, 1, 1) @ Rz(rot)``; a reflection when flipped).
    """
    w, h = float(img_wh[0]), float(img_wh[1])
    rz = G.axis_rotation(2, np.deg2rad(params.rot))
    c = np.array([w / 2.0, h / 2.0])
    T = np.concatenate([rz[:2, :2], (c - rz[:2, :2] @ c)[:, None]], axis=1)
    L = rz
    if params.flip:
        F = np.array([[-1.0, 0.0, w], [0.0, 1.0, 0.0]])
        T = G.compose_affine(T, F)
        L = np.diag([-1.0, 1.0, 1.0]) @ rz
    return T, L


@dataclass
class Targets:
    """Per-person targets in one image frame (float64 numpy; see the module docstring)."""

    kp2d: np.ndarray  # (24, 3) px + conf
    joints3d: np.ndarray  # (24, 4)
    joints_smpl: np.ndarray  # (24, 4)
    pose: np.ndarray  # (72,)
    cam_t: np.ndarray  # (3,)
    has_cam_t: bool
    center: np.ndarray  # (2,) person box centre px
    b: float  # person box size px


def transform_targets(t: Targets, params: AugmentParams, img_wh: tuple[float, float]) -> Targets:
    """Apply the rotation/flip of ``params`` (not the box jitter) to all targets.

    ``cam_t`` follows from the pelvis (``joints_smpl[0]``) when known, else it is dropped
    (``has_cam_t`` False) whenever the camera moves.
    """
    if not params.flip and params.rot == 0.0:
        return t
    T, L = image_transform(params, img_wh)
    kp = t.kp2d.copy()
    kp[:, :2] = G.map_points(kp[:, :2], T)
    j3 = t.joints3d.copy()
    j3[:, :3] = j3[:, :3] @ L.T
    js = t.joints_smpl.copy()
    js[:, :3] = js[:, :3] @ L.T
    rz = G.axis_rotation(2, np.deg2rad(params.rot))
    pose = t.pose.copy()
    pose[:3] = _mat_to_aa(rz @ _aa_to_mat(pose[:3]))
    has_cam_t = t.has_cam_t and t.joints_smpl[0, 3] > 0
    cam_t = t.cam_t.copy()
    if has_cam_t:
        pelvis = t.joints_smpl[0, :3]
        cam_t = L @ pelvis - (pelvis - t.cam_t)
    center = G.map_points(t.center[None], T)[0]
    if params.flip:
        kp = kp[list(SPIN24_FLIP)]
        j3 = j3[list(SPIN24_FLIP)]
        js = js[list(SMPL24_FLIP)]
        pose = flip_pose(pose)
    return Targets(kp, j3, js, pose, cam_t, has_cam_t, center, t.b)


# -- reading -----------------------------------------------------------------------------------


def _strings(arr: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(arr).reshape(-1).tolist()]


def _field(d: Mapping[str, np.ndarray], keys: Sequence[str], n: int, shape: tuple[int, ...],
           path: Path) -> np.ndarray | None:
    """The first of ``keys`` present in ``d`` as float64 (n, *shape), or None."""
    for key in keys:
        if key not in d:
            continue
        a = np.asarray(d[key], dtype=np.float64)
        if a.shape[0] != n or a.size != n * int(np.prod(shape)):
            want = ", ".join(map(str, (n, *shape)))
            raise DatasetError(f"{path}: field {key!r} has shape {a.shape}, expected ({want})")
        return a.reshape((n, *shape))
    return None


def _betas(d: Mapping[str, np.ndarray], n: int, path: Path) -> np.ndarray | None:
    """``shape`` (n, K) -> (n, 10): the first 10 coefficients, zero-padded."""
    if "shape" not in d:
        return None
    a = np.asarray(d["shape"], dtype=np.float64).reshape(n, -1)
    out = np.zeros((n, 10))
    out[:, : min(10, a.shape[1])] = a[:, :10]
    return out


class SpinDataset(Dataset):
    """A SPIN/CLIFF preprocessed ``.npz`` with its images -> Multi-RoI training items.

    Args:
        npz_path: the ``.npz`` file (see the module docstring for its fields).
        image_root: folder the ``imgname`` paths are relative to (default: the file's folder).
        aspect: ``"rect"`` (256x192 crops) or ``"square"`` (224x224), the checkpoint's.
        num_rois: M, 1..5 (the first M RoIs of the fixed layout).
        augment: :class:`AugmentConfig` for training, None for none (evaluation).
        seed: seed of the augmentation random numbers.
        normalize: ImageNet-normalised float32 crops (True) or uint8 0..255 (False).
        name: a label (default: the file's stem).
        crop_hw: crop size (h, w) in pixels (default: the aspect's standard size).
    """

    def __init__(
        self,
        npz_path: str | os.PathLike,
        image_root: str | os.PathLike | None = None,
        aspect: str = "rect",
        num_rois: int = G.MAX_ROIS,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        normalize: bool = True,
        name: str | None = None,
        crop_hw: tuple[int, int] | None = None,
    ) -> None:
        self.path = Path(npz_path)
        self.root = Path(image_root) if image_root is not None else self.path.parent
        self.aspect = aspect
        # crop size in pixels (h, w); the box convention (aspect ratio) stays the aspect's
        self.crop_hw = tuple(int(x) for x in crop_hw) if crop_hw is not None else G.crop_size(aspect)
        self.num_rois = int(G.roi_layout(num_rois).shape[0])
        self.augment = augment
        self.seed = int(seed)
        self.normalize = normalize
        self.name = name or self.path.stem
        d = load_npz_arrays(self.path)
        self.imgnames = _strings(d["imgname"])
        n = len(self.imgnames)
        p = self.path
        self.center = _field(d, ("center",), n, (2,), p)
        self.scale = _field(d, ("scale",), n, (), p)
        self.part = _field(d, ("part",), n, (24, 3), p)
        self.S = _field(d, ("S",), n, (24, 4), p)
        self.pose = _field(d, ("pose",), n, (72,), p)
        self.shape = _betas(d, n, p)
        has = _field(d, ("has_smpl",), n, (), p)
        self.has_smpl = np.ones(n) if has is None else has
        if self.pose is None or self.shape is None:
            self.has_smpl = np.zeros(n)
        self.focal = _field(d, ("focal_l", "focal_length"), n, (), p)
        self.cam_t = _field(d, ("cam_t", "global_t"), n, (3,), p)
        self.joints_smpl = _field(d, ("joints_smpl24",), n, (24, 3), p)
        self.gender = np.array([_GENDER_CODES.get(g.strip().lower(), 0) for g in _strings(d["gender"])]
                               if "gender" in d else np.zeros(n, dtype=np.int64), dtype=np.int64)
        self.betas_space = _strings(d["betas_space"])[0] if "betas_space" in d else "smpl"
        _, self.image_ids = np.unique(np.array(self.imgnames), return_inverse=True)
        self.num_images = int(self.image_ids.max()) + 1 if n else 0
        self.person_offset = 0
        self.image_offset = 0
        self.dataset_index = 0
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.imgnames)

    def set_epoch(self, epoch: int) -> None:
        """Use with a plain shuffling DataLoader: epoch ``e`` draws the augmentation of index
        ``i`` with key ``e * len + i`` (a :class:`MixedDataset` needs no such call)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Row ``index % len`` with augmentation key ``epoch * len + index`` (indices past one
        epoch also give fresh augmentations of the same rows)."""
        index = int(index)
        return self.get(index % len(self), aug_key=self.epoch * len(self) + index)

    # -- pieces --------------------------------------------------------------------------------
    def targets(self, row: int) -> Targets:
        """Row ``row``'s targets in the original image (zeros where the file has none)."""
        kp = self.part[row] if self.part is not None else np.zeros((24, 3))
        j3 = self.S[row] if self.S is not None else np.zeros((24, 4))
        js = np.zeros((24, 4))
        if self.joints_smpl is not None:
            js[:, :3], js[:, 3] = self.joints_smpl[row], 1.0
        pose = self.pose[row] if self.pose is not None else np.zeros(72)
        has_t = self.cam_t is not None
        cam_t = self.cam_t[row] if has_t else np.zeros(3)
        b = float(self.scale[row]) * G.PIXEL_STD
        return Targets(kp.copy(), j3.copy(), js, pose.copy(), cam_t.copy(), has_t, self.center[row].copy(), b)

    def read_image(self, row: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of row ``row``'s image."""

        p = self.root / self.imgnames[row]
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"{self.path}: cannot read image {p} (row {row}; imgname is relative to {self.root})")
        return img[:, :, ::-1]

    def get(self, row: int, aug_key: int | None = None) -> dict[str, Any]:
        """The item of row ``row`` (see the module docstring); ``aug_key`` seeds its augmentation
        (ignored without ``augment``)."""
        image = self.read_image(row)
        h_img, w_img = image.shape[:2]
        wh = (float(w_img), float(h_img))
        focal = float(self.focal[row]) if self.focal is not None else float(G.default_focal(w_img, h_img))
        params = AugmentParams()
        if self.augment is not None:
            key = row if aug_key is None else int(aug_key)
            params = AugmentParams.draw(self.augment, np.random.default_rng([self.seed, key]))
        t = transform_targets(self.targets(row), params, wh)
        T, _ = image_transform(params, wh)
        b = t.b * params.scale
        box = np.array([t.center[0] + params.shift[0] * t.b, t.center[1] + params.shift[1] * t.b, b])
        rois = G.make_rois(box, self.num_rois)
        affines = G.crop_affine(rois, self.crop_hw)
        crops = np.stack([G.crop_image_np(image, G.compose_affine(T, a), self.crop_hw) for a in affines])
        if params.gains != (1.0, 1.0, 1.0):
            crops = np.clip(crops.astype(np.float32) * np.asarray(params.gains, np.float32), 0, 255)
            crops = crops.round().astype(np.uint8)
        img = torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2)))
        if self.normalize:
            img = G.normalize_crops(img)
        kp_crop = np.concatenate([points_to_crop(t.kp2d[:, :2], affines, self.crop_hw),
                                  np.broadcast_to(t.kp2d[None, :, 2:], (len(rois), 24, 1))], axis=-1)
        pose = t.pose
        f32 = functools.partial(torch.as_tensor, dtype=torch.float32)
        i64 = functools.partial(torch.as_tensor, dtype=torch.int64)
        return {
            "img": img,
            "bbox_info": f32(G.bbox_info(rois, np.array(wh), focal)),
            "rois": f32(rois),
            "affines": f32(affines),
            "img_wh": f32(wh),
            "focal": f32(focal),
            "K": f32(G.intrinsics(focal, w_img, h_img)),
            "kp2d_full": f32(t.kp2d),
            "kp2d_crop": f32(kp_crop),
            "joints3d": f32(t.joints3d),
            "joints_smpl24": f32(t.joints_smpl),
            "pose": f32(pose),
            "rotmats": f32(_aa_to_mat(pose.reshape(24, 3))),
            "betas": f32(self.shape[row] if self.shape is not None else np.zeros(10)),
            "cam_t": f32(t.cam_t if t.has_cam_t else np.zeros(3)),
            "has_smpl": f32(float(self.has_smpl[row] > 0)),
            "has_3d": f32(float((t.joints3d[:, 3] > 0).any())),
            "has_cam_t": f32(float(t.has_cam_t)),
            "has_joints_smpl": f32(float(t.joints_smpl[0, 3] > 0)),
            "gender": i64(int(self.gender[row])),
            "person_id": i64(self.person_offset + row),
            "image_id": i64(self.image_offset + int(self.image_ids[row])),
            "dataset": i64(self.dataset_index),
            "index": i64(row),
            "aug_affine": f32(T),
            "aug_flip": f32(float(params.flip)),
            "aug_rot": f32(params.rot),
            "aug_scale": f32(params.scale),
            "imgname": self.imgnames[row],
        }


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch: tensors gain a leading B dimension, strings become lists."""
    if not items:
        raise ValueError("collate needs at least one item")
    out: dict[str, Any] = {}
    for k, v in items[0].items():
        if isinstance(v, torch.Tensor):
            out[k] = torch.stack([it[k] for it in items])
        else:
            out[k] = [it[k] for it in items]
    return out


# -- mixing ------------------------------------------------------------------------------------


def _largest_remainder(ratios: np.ndarray, total: int) -> np.ndarray:
    raw = ratios / ratios.sum() * total
    counts = np.floor(raw).astype(np.int64)
    rest = total - int(counts.sum())
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


class MixedDataset(Dataset):
    """Several :class:`SpinDataset` mixed by ratio, addressed by a global sample index.

    ``mixed[g]`` for any ``g >= 0`` (not only ``< len(mixed)``): epoch ``e = g //
    epoch_length``, position ``g % epoch_length``.  Each epoch holds
    ``round(ratio_d * epoch_length)`` samples of dataset ``d`` (largest remainder) in an order
    shuffled by ``(seed, e)``; dataset ``d``'s rows come from the successive permutations
    ``default_rng((seed, 1 + d, r)).permutation(len_d)``, ``r = 0, 1, ...``, so every row is
    used once per round and nothing depends on how the run was interrupted.  The item's
    augmentation key is ``g``.  ``person_id``/``image_id`` are offset per dataset so that they
    are unique across datasets; ``dataset`` is the dataset's index.

    Args:
        datasets: the datasets (their ``person_offset``/``image_offset``/``dataset_index``
            attributes are set here).
        ratios: sampling weights (normalised); default proportional to the lengths.
        seed: seed of the order.
        epoch_length: samples per epoch (default: the total number of rows).
        allow_mixed_betas: allow datasets whose betas live in different shape spaces.
    """

    def __init__(
        self,
        datasets: Sequence[SpinDataset],
        ratios: Sequence[float] | None = None,
        seed: int = 0,
        epoch_length: int | None = None,
        allow_mixed_betas: bool = False,
    ) -> None:
        if not datasets:
            raise ValueError("MixedDataset needs at least one dataset")
        self.datasets = list(datasets)
        lens = np.array([len(d) for d in self.datasets], dtype=np.float64)
        if (lens == 0).any():
            raise ValueError("MixedDataset: empty dataset " + ", ".join(d.name for d, n in zip(self.datasets, lens) if not n))
        r = lens if ratios is None else np.asarray(ratios, dtype=np.float64)
        if r.shape != lens.shape or (r < 0).any() or r.sum() <= 0:
            raise ValueError(f"ratios must be {len(lens)} non-negative weights with a positive sum; got {ratios}")
        self.ratios = r / r.sum()
        spaces = {d.betas_space for d in self.datasets if float(np.max(d.has_smpl, initial=0)) > 0}
        if len(spaces) > 1 and not allow_mixed_betas:
            raise ValueError(f"datasets with betas in different shape spaces {sorted(spaces)}; the shape "
                             "targets would disagree (pass allow_mixed_betas=True to mix anyway)")
        self.seed = int(seed)
        self.epoch_length = int(epoch_length) if epoch_length is not None else int(lens.sum())
        if self.epoch_length <= 0:
            raise ValueError("epoch_length must be positive")
        self.counts = _largest_remainder(self.ratios, self.epoch_length)
        p_off = i_off = 0
        for k, d in enumerate(self.datasets):
            d.person_offset, d.image_offset, d.dataset_index = p_off, i_off, k
            p_off += len(d)
            i_off += d.num_images
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.epoch_length

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Dataset index of every position of ``epoch`` and its rank among that dataset's draws."""
        if epoch not in self._epochs:
            which = np.repeat(np.arange(len(self.datasets)), self.counts)
            which = np.random.default_rng((self.seed, 0, epoch)).permutation(which)
            rank = np.zeros(len(which), dtype=np.int64)
            for k in range(len(self.datasets)):
                sel = which == k
                rank[sel] = np.arange(int(sel.sum()))
            if len(self._epochs) >= 2:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[epoch] = (which, rank)
        return self._epochs[epoch]

    def _perm(self, k: int, rnd: int) -> np.ndarray:
        """Round ``rnd``'s permutation of dataset ``k``'s rows."""
        key = (k, rnd)
        if key not in self._perms:
            if len(self._perms) >= 2 * len(self.datasets):
                self._perms.pop(next(iter(self._perms)))
            self._perms[key] = np.random.default_rng((self.seed, 1 + k, rnd)).permutation(len(self.datasets[k]))
        return self._perms[key]

    def locate(self, g: int) -> tuple[int, int]:
        """``(dataset index, row)`` of global sample index ``g``."""
        g = int(g)
        if g < 0:
            raise IndexError(f"global sample index must be >= 0, got {g}")
        epoch, pos = divmod(g, self.epoch_length)
        which, rank = self._epoch(epoch)
        k = int(which[pos])
        q = epoch * int(self.counts[k]) + int(rank[pos])  # draws of dataset k before this one
        rnd, i = divmod(q, len(self.datasets[k]))
        return k, int(self._perm(k, rnd)[i])

    def __getitem__(self, g: int) -> dict[str, Any]:
        k, row = self.locate(g)
        return self.datasets[k].get(row, aug_key=int(g))


class GlobalIndexSampler(Sampler[int]):
    """Yields ``start, start + 1, ...`` (to ``stop``, or forever): the global sample indices
    of a :class:`MixedDataset`.  Resume step ``s`` of batch size ``B`` with ``start = s * B``."""

    def __init__(self, start: int = 0, stop: int | None = None) -> None:
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"need 0 <= start <= stop; got start={start}, stop={stop}")
        self.start, self.stop = int(start), stop

    def __iter__(self) -> Iterator[int]:
        g = self.start
        while self.stop is None or g < self.stop:
            yield g
            g += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an endless GlobalIndexSampler has no length")
        return int(self.stop) - self.start
