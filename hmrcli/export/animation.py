"""Animation files of one tracked person: parameters (``.npz``), animated skinned GLB, BVH.

A :class:`TrackAnimation` holds one track of a sequence (a video or a folder of frames): per
frame the 24 SMPL joint rotations, the translation, the source frame index, plus one shape
(betas) for the whole track and the frame rate. Three encoders:

* :func:`animation_npz_bytes` / :func:`read_animation_npz`: the parameters as they are
  (``track_XX.npz``, format ``hmrcli.animation/1``; keys below);
* :func:`animated_glb_bytes`: the skinned GLB of :mod:`hmrcli.export.glb` (same skeleton,
  mesh, weights, inverse bind matrices, axes) plus one glTF animation: a rotation channel
  per joint and the root's translation, keyframed at ``time = source frame index / fps``
  seconds (LINEAR interpolation: spherical for the rotations), an optional camera;
* :func:`bvh_text`: a BVH motion file of the SMPL skeleton.

Conventions (all three). Units: metres, seconds, degrees in BVH only. ``rotmats`` are the
body model's local joint rotations, joint 0 the global orientation in the OpenCV camera frame
(x right, y down, z forward), as in :class:`hmrcli.engine.base.PersonEstimate`; ``transl``
is the camera translation, ``X_camera = X_model + transl``. GLB and BVH scenes are the camera
frame rotated 180 degrees about x, ``X_file = diag(1, -1, -1) X_camera`` (+Y up, the camera
at the origin looking down -Z), exactly as the still GLB in the camera frame, so a GLB, a BVH
and an OBJ/PLY of the same person land on the same place in a DCC.

NPZ keys (``allow_pickle=False``): ``format`` ("hmrcli.animation/1"), ``track_id`` (str),
``body_model`` (str, a name for :func:`hmrcli.body.load_body_model`), ``frames`` (T,) int64
source frame indices (strictly increasing, 0-based), ``fps`` () float64, ``rotmats``
(T, 24, 3, 3) float64, ``betas`` (B,) float64 (B = 10 for SMPL and the free model; the body
model's own betas that were applied, zeros when none were), ``transl`` (T, 3) float64
metres, optionally ``K`` (3, 3) float64 pixels and ``image_wh`` (2,) int64 (W, H pixels),
and ``convention`` (a sentence stating the above).
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pygltflib as g
import torch

from hmrcli._version import __version__
from hmrcli.export.glb import (
    GLTF_FROM_OPENCV,
    _as_rotations,
    _quat_xyzw,
    build_skinned,
    shaped_betas,
)
from hmrcli.export.writers import deterministic_npz_bytes

__all__ = [
    "ANIMATION_FORMAT",
    "AnimationFileError",
    "TrackAnimation",
    "animated_glb_bytes",
    "animation_npz_bytes",
    "bvh_text",
    "read_animation_npz",
]

ANIMATION_FORMAT = "hmrcli.animation/1"
_CONVENTION = (
    "rotmats (T,24,3,3): SMPL local joint rotations, joint 0 = global orientation in the OpenCV camera "
    "frame (x right, y down, z forward); transl (T,3) metres, X_camera = X_model + transl; betas: the body "
    "model's own shape coefficients (zeros when none were applied); frames: 0-based source frame indices; "
    "time of row i = frames[i] / fps seconds"
)
_REQUIRED = ("track_id", "body_model", "frames", "fps", "rotmats", "betas", "transl")


class AnimationFileError(ValueError):
    """A track animation file that cannot be read; the message names the file."""


@dataclass
class TrackAnimation:
    """One tracked person over a sequence.

    track_id: ``"track_03"``; frames (T,) int source frame indices, strictly increasing;
    fps: frames per second of the source; rotmats (T, 24, 3, 3) joint rotations (joint 0 the
    global orientation in the OpenCV camera frame); betas (10,) one shape for the track (the
    body model's own betas that were applied; zeros when not applied); transl (T, 3) metres,
    ``X_camera = X_model + transl``; body_model: the name for
    :func:`hmrcli.body.load_body_model` (``"smpl"`` or ``"free"``); K (3, 3) pixels and
    image_wh (W, H) pixels of the camera, or None. Arrays are converted (float64 / int64) and
    checked on construction: a bad shape or value raises ``ValueError``.
    """

    track_id: str
    frames: np.ndarray
    fps: float
    rotmats: np.ndarray
    betas: np.ndarray
    transl: np.ndarray
    body_model: str
    K: np.ndarray | None = None
    image_wh: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.track_id, str) or not self.track_id:
            raise ValueError(f"track_id must be a non-empty string; got {self.track_id!r}")
        if not isinstance(self.body_model, str) or not self.body_model:
            raise ValueError(f"body_model must be a non-empty string; got {self.body_model!r}")
        frames = np.asarray(self.frames)
        if frames.ndim != 1 or frames.shape[0] < 1:
            raise ValueError(f"frames must be (T,) with T >= 1; got shape {frames.shape}")
        if frames.dtype.kind == "f":
            if not np.all(np.isfinite(frames)) or np.any(frames != np.round(frames)):
                raise ValueError("frames must be integer frame indices")
        elif frames.dtype.kind not in "iu":
            raise ValueError(f"frames must be integer frame indices; got dtype {frames.dtype}")
        self.frames = frames.astype(np.int64)
        if self.frames[0] < 0 or np.any(np.diff(self.frames) <= 0):
            raise ValueError("frames must be non-negative and strictly increasing")
        t = self.frames.shape[0]
        fps = float(self.fps)
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be a positive number; got {self.fps!r}")
        self.fps = fps
        self.rotmats = _finite(self.rotmats, (t, 24, 3, 3), "rotmats")
        self.transl = _finite(self.transl, (t, 3), "transl")
        betas = _finite(self.betas, None, "betas")
        if betas.ndim != 1 or betas.shape[0] < 1:
            raise ValueError(f"betas must be (B,), one shape for the track; got shape {betas.shape}")
        self.betas = betas
        if self.K is not None:
            self.K = _finite(self.K, (3, 3), "K")
        if self.image_wh is not None:
            wh = np.asarray(self.image_wh)
            if wh.shape != (2,) or wh.dtype.kind not in "iu" or np.any(wh <= 0):
                raise ValueError(f"image_wh must be two positive integers (W, H); got {self.image_wh!r}")
            self.image_wh = (int(wh[0]), int(wh[1]))

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def times(self) -> np.ndarray:
        """(T,) seconds: source frame index / fps."""
        return self.frames / self.fps


def _finite(a: Any, shape: tuple[int, ...] | None, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values")
    return arr


# -- NPZ ---------------------------------------------------------------------------------------

def animation_npz_bytes(track: TrackAnimation) -> bytes:
    """The track's parameters as ``.npz`` bytes (keys in the module docstring). Deterministic:
    equal tracks give equal bytes (fixed zip timestamps and key order)."""
    arrays: dict[str, np.ndarray] = {
        "format": np.array(ANIMATION_FORMAT),
        "track_id": np.array(track.track_id),
        "body_model": np.array(track.body_model),
        "frames": track.frames.astype(np.int64),
        "fps": np.array(track.fps, dtype=np.float64),
        "rotmats": track.rotmats.astype(np.float64),
        "betas": track.betas.astype(np.float64),
        "transl": track.transl.astype(np.float64),
        "convention": np.array(_CONVENTION),
    }
    if track.K is not None:
        arrays["K"] = track.K.astype(np.float64)
    if track.image_wh is not None:
        arrays["image_wh"] = np.array(track.image_wh, dtype=np.int64)
    return deterministic_npz_bytes(arrays)


def read_animation_npz(path: str | os.PathLike) -> TrackAnimation:
    """Read a file written from :func:`animation_npz_bytes`; shapes and values are checked and
    any problem raises :class:`AnimationFileError` naming the file."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise AnimationFileError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise AnimationFileError(f"{path}: not a readable .npz file ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise AnimationFileError(f"{path}: not an .npz archive")
    try:
        with z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise AnimationFileError(f"{path}: not a readable .npz file ({e})") from None
    fmt = str(data["format"]) if "format" in data else None
    if fmt is not None and fmt != ANIMATION_FORMAT:
        raise AnimationFileError(f"{path}: format {fmt!r}, expected {ANIMATION_FORMAT!r}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise AnimationFileError(f"{path}: not a track animation file, missing {', '.join(missing)}")
    try:
        for key in ("track_id", "body_model"):
            if data[key].shape != () or data[key].dtype.kind != "U":
                raise ValueError(f"{key} must be a string")
        if data["fps"].shape != ():
            raise ValueError(f"fps must be a scalar; got shape {data['fps'].shape}")
        wh = data.get("image_wh")
        return TrackAnimation(
            track_id=str(data["track_id"]), frames=data["frames"], fps=float(data["fps"]),
            rotmats=data["rotmats"], betas=data["betas"], transl=data["transl"],
            body_model=str(data["body_model"]), K=data.get("K"),
            image_wh=None if wh is None else tuple(np.asarray(wh).reshape(-1).tolist()))
    except ValueError as e:
        raise AnimationFileError(f"{path}: {e}") from None


# -- shared geometry -------------------------------------------------------------------------

def _check_body(body: Any, track: TrackAnimation) -> np.ndarray:
    """The track's betas padded for ``body`` (a mismatch of body model names is refused: betas of
    one model mean nothing in another)."""
    name = getattr(getattr(body, "info", None), "name", None)
    if name is not None and name != track.body_model:
        raise ValueError(f"{track.track_id} was estimated with the {track.body_model!r} body model; "
                         f"got a {name!r} body model")
    return shaped_betas(body, track.betas)


def _rotations(track: TrackAnimation) -> np.ndarray:
    """(T, 24, 3, 3) proper rotations (nearest rotation of each stored matrix)."""
    return _as_rotations(track.rotmats.reshape(-1, 3, 3)).reshape(-1, 24, 3, 3)


def _continuous(q: np.ndarray) -> np.ndarray:
    """Flip quaternion signs (T, ..., 4) so that consecutive keys lie in one hemisphere: the
    same rotations, and interpolation between keys takes the short way."""
    q = q.copy()
    for t in range(1, q.shape[0]):
        flip = np.sum(q[t] * q[t - 1], axis=-1) < 0
        q[t][flip] = -q[t][flip]
    return q


# -- animated GLB ----------------------------------------------------------------------------

def animated_glb_bytes(body: Any, track: TrackAnimation, *, with_camera: bool = False) -> bytes:
    """The track as one animated, skinned GLB (bytes).

    The document is :func:`hmrcli.export.glb.skinned_glb_bytes`'s for the track's first frame
    in the camera frame (so viewers that ignore animations show frame 0), plus one animation
    named after the track: per joint a rotation channel (unit quaternions; joint 0's is
    ``diag(1, -1, -1) R_0``), and the root joint's translation ``diag(1, -1, -1) (J_0 +
    transl)`` with ``J_0`` the shaped rest pelvis; key times ``frames / fps`` seconds, LINEAR
    interpolation (slerp). Frames missing from a track (gaps) are interpolated by the viewer.
    ``with_camera`` adds the camera (at the origin; needs ``track.K`` and ``track.image_wh``).
    body: the :class:`hmrcli.body.BodyModel` named by ``track.body_model``. Blender imports
    keys at ``time * scene.render.fps`` (``fps_base`` ignored): set the scene's frame rate to
    ``track.fps`` first so that Blender frame k is source frame k (for a non-integer rate such
    as 29.97 the keys drift by the rounding, 0.1 %).
    """
    b = _check_body(body, track)
    rot = _rotations(track)
    F = GLTF_FROM_OPENCV
    camera = None
    if with_camera:
        if track.K is None or track.image_wh is None:
            raise ValueError(f"{track.track_id}: no camera intrinsics (K, image_wh) for the GLB camera")
        camera = {"K": track.K, "width": track.image_wh[0], "height": track.image_wh[1], "position": np.zeros(3)}
    extras = {
        "hmrcli": __version__, "track_id": track.track_id, "fps": track.fps,
        "frames": {"first": int(track.frames[0]), "last": int(track.frames[-1]), "count": track.num_frames},
        "time": "key time (s) = source frame index / fps", "frame": "camera",
        "axes": "X_glb = diag(1, -1, -1) X_camera (glTF +Y up; OpenCV camera x right, y down, z forward)",
        "body_model": track.body_model, "betas": track.betas.tolist(),
        "note": "linear blend skinning only: pose-corrective blend shapes are not represented",
    }
    doc = build_skinned(body, rot[0], b, transl=track.transl[0], camera=camera, name=track.track_id,
                        extras=extras)
    gl, blob = doc.gltf, doc.blob

    quats = _quat_xyzw(rot)  # (T, 24, 4)
    quats[:, 0] = _quat_xyzw(np.einsum("ab,tbc->tac", F, rot[:, 0]))
    quats = _continuous(quats)
    root_pos = (doc.J[0] + track.transl) @ F.T  # (T, 3)

    a_time = blob.add(track.times.astype(np.float32), g.FLOAT, g.SCALAR, minmax=True)
    samplers: list[Any] = []
    channels: list[Any] = []
    for k, node in enumerate(doc.joint_nodes):
        a_q = blob.add(quats[:, k].astype(np.float32), g.FLOAT, g.VEC4)
        samplers.append(g.AnimationSampler(input=a_time, output=a_q, interpolation="LINEAR"))
        channels.append(g.AnimationChannel(sampler=len(samplers) - 1,
                                           target=g.AnimationChannelTarget(node=node, path="rotation")))
    a_t = blob.add(root_pos.astype(np.float32), g.FLOAT, g.VEC3)
    samplers.append(g.AnimationSampler(input=a_time, output=a_t, interpolation="LINEAR"))
    channels.append(g.AnimationChannel(sampler=len(samplers) - 1,
                                       target=g.AnimationChannelTarget(node=doc.joint_nodes[0], path="translation")))
    gl.animations = [g.Animation(name=track.track_id, samplers=samplers, channels=channels)]
    return doc.to_bytes()


# -- BVH -------------------------------------------------------------------------------------

#: Euler order of every BVH rotation channel: the rotation is Rz(z) Rx(x) Ry(y) (intrinsic
#: Z, then X, then Y), angles in degrees, in the order the CHANNELS line lists them.
BVH_ROTATION_ORDER = "ZXY"


def _filled(track: TrackAnimation, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every source frame from the first to the last: (frames, rotations (N, 24, 3, 3),
    translations (N, 3)); frames missing from the track are interpolated (slerp of each joint
    rotation, linear translation) between the neighbouring keys."""
    import roma  # start-up: roma imports torch._dynamo (~3 s)

    frames = track.frames
    full = np.arange(frames[0], frames[-1] + 1, dtype=np.int64)
    if full.shape[0] == frames.shape[0]:
        return full, rot, track.transl
    out_r = np.empty((full.shape[0], 24, 3, 3))
    out_t = np.empty((full.shape[0], 3))
    key = full[np.isin(full, frames)] - frames[0]
    out_r[key], out_t[key] = rot, track.transl
    q = torch.as_tensor(_continuous(_quat_xyzw(rot)))  # (T, 24, 4)
    for f in full[~np.isin(full, frames)]:
        j = int(np.searchsorted(frames, f))  # frames[j - 1] < f < frames[j]
        s = float((f - frames[j - 1]) / (frames[j] - frames[j - 1]))
        qf = roma.unitquat_slerp(q[j - 1], q[j], torch.tensor([s], dtype=q.dtype))[0]
        out_r[f - frames[0]] = roma.unitquat_to_rotmat(qf).numpy()
        out_t[f - frames[0]] = (1 - s) * track.transl[j - 1] + s * track.transl[j]
    return full, out_r, out_t


def bvh_text(body: Any, track: TrackAnimation) -> str:
    """The track as BVH text (Biovision hierarchy: skeleton + one motion line per frame).

    Skeleton: the 24 SMPL joints (``hmrcli.body.JOINT_NAMES``, parented like SMPL), rest
    offsets from the body model's joints at the track's shape (metres, the body model's
    canonical axes: +Y up, the body facing +Z, so the rest pose stands upright), ``End Site``
    at the five leaves (feet, head, hands) half a parent bone beyond them. The root (pelvis)
    has OFFSET 0 and channels ``Xposition Yposition Zposition Zrotation Xrotation
    Yrotation``; every other joint ``Zrotation Xrotation Yrotation``: rotation = Rz Rx Ry
    (intrinsic ZXY Euler angles, degrees, unwrapped over time to avoid 360-degree jumps).

    Axes: like the GLB, ``X_bvh = diag(1, -1, -1) X_camera`` (OpenCV camera frame rotated 180
    degrees about x: +Y up, the camera at the origin looking down -Z). The root position
    channels are the pelvis position in that frame, ``diag(1, -1, -1) (J_0 + transl)``, and
    its rotation ``diag(1, -1, -1) R_0``; the other joints' are their local rotations.
    Units: metres (importers that expect centimetres need a scale of 100).

    Frames: one motion line per source frame from ``frames[0]`` to ``frames[-1]`` (BVH has a
    fixed frame time, ``1 / fps``); frames missing from the track are interpolated (slerp,
    linear translation). Motion line i is source frame ``frames[0] + i``.

    Written by hand: BVH is a short plain-text format, and the Python BVH writers on PyPI
    either pin exact versions of their own helper libraries (bvhio: pyglm==2.8.2,
    spatial-transform==1.3.3) or pull in plotting stacks (pybvh: matplotlib) for this; the
    Euler conversion is roma's (``roma.rotmat_to_euler``). Checked by reading the file back in
    the tests and by Blender's BVH importer (``tests/test_dcc_blender.py``).
    """
    import roma  # start-up: roma imports torch._dynamo (~3 s)

    b = _check_body(body, track)
    J = body.rest_joints(b)  # (24, 3), model frame
    parents = list(body.parents)
    names = list(body.joint_names)
    F = GLTF_FROM_OPENCV
    frames, rot, transl = _filled(track, _rotations(track))
    local = rot.copy()
    local[:, 0] = np.einsum("ab,tbc->tac", F, rot[:, 0])
    euler = roma.rotmat_to_euler(BVH_ROTATION_ORDER, torch.as_tensor(local), degrees=True).numpy()  # (N, 24, 3)
    euler = np.unwrap(euler, period=360.0, axis=0)
    root_pos = (J[0] + transl) @ F.T  # (N, 3)

    children: dict[int, list[int]] = {k: [] for k in range(24)}
    for k, p in enumerate(parents):
        if p >= 0:
            children[p].append(k)
    order: list[int] = []
    lines = ["HIERARCHY"]

    def fmt(v: np.ndarray) -> str:
        return " ".join(f"{float(x):.6f}" for x in v)

    def emit(k: int, depth: int) -> None:
        ind = "  " * depth
        order.append(k)
        if parents[k] < 0:
            lines.append(f"{ind}ROOT {names[k]}")
            lines.append(f"{ind}{{")
            lines.append(f"{ind}  OFFSET {fmt(np.zeros(3))}")
            lines.append(f"{ind}  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation")
        else:
            lines.append(f"{ind}JOINT {names[k]}")
            lines.append(f"{ind}{{")
            lines.append(f"{ind}  OFFSET {fmt(J[k] - J[parents[k]])}")
            lines.append(f"{ind}  CHANNELS 3 Zrotation Xrotation Yrotation")
        for c in children[k]:
            emit(c, depth + 1)
        if not children[k]:
            lines.append(f"{ind}  End Site")
            lines.append(f"{ind}  {{")
            lines.append(f"{ind}    OFFSET {fmt(0.5 * (J[k] - J[parents[k]]))}")
            lines.append(f"{ind}  }}")
        lines.append(f"{ind}}}")

    emit(parents.index(-1), 0)
    lines.append("MOTION")
    lines.append(f"Frames: {len(frames)}")
    lines.append(f"Frame Time: {1.0 / track.fps:.9f}")
    for i in range(len(frames)):
        values = [root_pos[i]] + [euler[i, k] for k in order]
        lines.append(" ".join(fmt(v) for v in values))
    return "\n".join(lines) + "\n"
