"""A small synthetic benchmark dataset in the real on-disk layouts, for tests and demos.

:func:`write_synthetic_3dpw` renders random plausible SMPL bodies (with the user's or a
test SMPL model) and writes, under one root:

* ``sequenceFiles/<split>/<seq>.pkl``: official-3DPW-style protocol-2 pickles of plain
  dicts of numpy arrays (world-frame ``poses``/``trans``, ``betas``, ``cam_poses``
  world->camera 4x4, ``cam_intrinsics``, ``genders`` 'm'/'f', ``poses2d`` (F,3,18),
  ``img_frame_ids``, ``campose_valid`` with one invalid frame);
* ``3dpw_<split>.npz``: the SPIN-style file of the same valid frames (camera-frame pose);
* ``imageFiles/<seq>/image_<frame:05d>.jpg``: grey images with the projected joints drawn;
* optionally ``h36m_valid_protocol2.npz`` with ``S`` (N,17,4) H36M joints (metres) of
  neutral bodies, when the SMPL folder has ``J_regressor_h36m.npy``.

Units: metres, radians, pixels.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hmrcli import geometry as G
from hmrcli.bench.datasets import keypoint_box
from hmrcli.body import load_body_model

__all__ = ["random_poses", "write_synthetic_3dpw", "write_synthetic_h36m"]


def textured_background(rng: np.random.Generator, w: int, h: int, colours: tuple[float, float] = (0.0, 255.0),
                        blotches: float = 60.0, grain: float = 8.0) -> np.ndarray:
    """A photo-like background for synthetic renders (RGB uint8 (h, w, 3)): a colour gradient
    (corner colours uniform in ``colours``), smooth colour blotches (+-``blotches`` grey
    levels, bicubic from a 1/16 grid) and pixel grain (normal, ``grain`` levels), so that
    detectors and landmark models see texture rather than a flat field."""
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    c0, c1, c2 = rng.uniform(colours[0], colours[1], (3, 3))
    img = c0 + np.einsum("hw,c->hwc", xx, c1 - c0) + np.einsum("hw,c->hwc", yy, c2 - c0) * 0.5
    small = rng.uniform(-blotches, blotches, (h // 16 + 1, w // 16 + 1, 3))
    img = img + cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) + rng.normal(0, grain, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def random_poses(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 72) axis-angle: upright global orientation with a random heading, mild body pose."""
    pose = rng.normal(scale=0.15, size=(n, 72))
    heading = rng.uniform(-np.pi, np.pi, size=n)
    up = G.axis_angle_to_rotmat(np.stack([np.zeros(n), heading, np.zeros(n)], 1))
    flip = G.axis_angle_to_rotmat(np.array([[np.pi, 0, 0]]))  # SMPL +Y up -> camera +Y down
    tilt = G.axis_angle_to_rotmat(rng.normal(scale=0.1, size=(n, 3)))
    pose[:, :3] = G.rotmat_to_axis_angle(flip @ up @ tilt)
    return pose


def _image(wh: tuple[int, int], kp: np.ndarray) -> np.ndarray:
    img = np.full((wh[1], wh[0], 3), 128, np.uint8)
    for x, y in kp[:, :2]:
        if np.isfinite(x) and np.isfinite(y):
            cv2.circle(img, (int(round(x)), int(round(y))), 3, (255, 255, 255), -1)
    return img


def write_synthetic_3dpw(
    root: str | os.PathLike,
    smpl_dir: str | os.PathLike | None = None,
    split: str = "test",
    n_sequences: int = 2,
    n_frames: int = 3,
    n_people: int = 2,
    image_wh: tuple[int, int] = (256, 256),
    focal: float = 300.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the synthetic 3DPW set (see module docs); returns a summary dict with the
    number of valid samples and the sequences written."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "sequenceFiles" / split).mkdir(parents=True, exist_ok=True)
    bodies: dict[str, Any] = {}
    k = np.array([[focal, 0, image_wh[0] / 2], [0, focal, image_wh[1] / 2], [0, 0, 1.0]])
    rows: dict[str, list] = {"imgname": [], "center": [], "scale": [], "pose": [], "shape": [], "gender": []}
    seqs = []
    for s in range(n_sequences):
        seq = f"synthetic_seq_{s:02d}"
        seqs.append(seq)
        (root / "imageFiles" / seq).mkdir(parents=True, exist_ok=True)
        frames = np.arange(n_frames) * 2  # not every image frame is annotated
        cam_r = G.axis_angle_to_rotmat(np.stack([np.zeros(n_frames), rng.uniform(-0.5, 0.5, n_frames), np.zeros(n_frames)], 1))
        cam_t = np.tile([0.0, 0.0, 4.0], (n_frames, 1))
        cam = np.tile(np.eye(4), (n_frames, 1, 1))
        cam[:, :3, :3], cam[:, :3, 3] = cam_r, cam_t
        genders = [str(rng.choice(["m", "f"])) for _ in range(n_people)]
        if n_people >= 2:
            genders[:2] = ["m", "f"]
        poses, betas, trans, p2d, valid = [], [], [], [], []
        kps_all = []
        for p in range(n_people):
            g = {"m": "male", "f": "female"}[genders[p]]
            if g not in bodies:
                bodies[g] = load_body_model("smpl", g, smpl_dir)
            pw = random_poses(n_frames, rng)
            b = rng.normal(scale=0.8, size=10)
            tr = np.stack([np.full(n_frames, (p - (n_people - 1) / 2) * 0.8), np.zeros(n_frames),
                           rng.normal(scale=0.1, size=n_frames)], 1)
            out = bodies[g](torch.as_tensor(pw), torch.as_tensor(b[None]), torch.as_tensor(tr))
            kp = out.keypoints_coco.numpy()  # world frame
            kc = np.einsum("fij,fkj->fki", cam_r, kp) + cam_t[:, None]
            uv = np.einsum("ij,fkj->fki", k, kc)
            uv = uv[..., :2] / uv[..., 2:]
            pose2d = np.zeros((n_frames, 3, 18))
            pose2d[:, :2, :17] = np.swapaxes(uv, 1, 2)
            pose2d[:, 2, :17] = 1.0
            v = np.ones(n_frames, dtype=np.int64)
            if p == 0 and n_frames > 1:
                v[-1] = 0  # one frame with an invalid camera pose
            poses.append(pw); betas.append(np.concatenate([b, np.zeros(6)])); trans.append(tr)
            p2d.append(pose2d); valid.append(v); kps_all.append(uv)
            orient_cam = G.rotmat_to_axis_angle(cam_r @ G.axis_angle_to_rotmat(pw[:, :3]))
            for f in range(n_frames):
                if not v[f]:
                    continue
                box = keypoint_box(pose2d[f])
                pc = pw[f].copy()
                pc[:3] = orient_cam[f]
                rows["imgname"].append(f"imageFiles/{seq}/image_{frames[f]:05d}.jpg")
                rows["center"].append(box[:2]); rows["scale"].append(box[2] / 200.0)
                rows["pose"].append(pc); rows["shape"].append(b); rows["gender"].append(genders[p])
        for f in range(n_frames):
            img = _image(image_wh, np.concatenate([kp[f] for kp in kps_all]))
            cv2.imwrite(str(root / "imageFiles" / seq / f"image_{frames[f]:05d}.jpg"), img)
        data = {
            "sequence": seq, "poses": poses, "betas": betas, "trans": trans, "cam_poses": cam,
            "cam_intrinsics": k, "genders": genders, "poses2d": p2d, "img_frame_ids": frames,
            "campose_valid": valid,
        }
        with open(root / "sequenceFiles" / split / f"{seq}.pkl", "wb") as fh:
            pickle.dump(data, fh, protocol=2)
    np.savez(root / f"3dpw_{split}.npz", imgname=np.array(rows["imgname"], dtype=str),
             center=np.array(rows["center"]), scale=np.array(rows["scale"]), pose=np.array(rows["pose"]),
             shape=np.array(rows["shape"]), gender=np.array(rows["gender"], dtype=str))
    return {"root": str(root), "samples": len(rows["imgname"]), "sequences": seqs}


def write_synthetic_h36m(
    root: str | os.PathLike,
    smpl_dir: str | os.PathLike | None = None,
    n: int = 6,
    image_wh: tuple[int, int] = (256, 256),
    focal: float = 300.0,
    seed: int = 1,
) -> dict[str, Any]:
    """Write ``h36m_valid_protocol2.npz`` (S (n,17,4) H36M joints of neutral SMPL bodies,
    metres, camera frame; pose, shape) and its images. Needs ``J_regressor_h36m.npy``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    body = load_body_model("smpl", "neutral", smpl_dir)
    if not body.has_h36m:
        raise FileNotFoundError("write_synthetic_h36m needs J_regressor_h36m.npy in the SMPL folder")
    pose = random_poses(n, rng)
    shape = rng.normal(scale=0.8, size=(n, 10))
    tr = np.tile([0.0, 0.0, 4.0], (n, 1))
    out = body(torch.as_tensor(pose), torch.as_tensor(shape), torch.as_tensor(tr))
    j = out.joints_h36m.numpy()
    s = np.concatenate([j, np.ones((n, 17, 1))], -1)
    k = np.array([[focal, 0, image_wh[0] / 2], [0, focal, image_wh[1] / 2], [0, 0, 1.0]])
    names, centers, scales = [], [], []
    for i in range(n):
        uv = (j[i] @ k.T)
        uv = uv[:, :2] / uv[:, 2:]
        box = keypoint_box(np.concatenate([uv, np.ones((17, 1))], 1))
        name = f"images/S9_Synthetic_{i // 3}.54138969_{i:06d}.jpg"
        cv2.imwrite(str(root / name), _image(image_wh, uv))
        names.append(name); centers.append(box[:2]); scales.append(box[2] / 200.0)
    np.savez(root / "h36m_valid_protocol2.npz", imgname=np.array(names, dtype=str), center=np.array(centers),
             scale=np.array(scales), S=s, pose=pose, shape=shape)
    return {"root": str(root), "samples": n}
