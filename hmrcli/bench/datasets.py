"""Readers for the benchmark datasets -> a flat list of :class:`Sample`.

Supported layouts (all files come from the user; see docs/method.md §7):

* SPIN-style preprocessed ``3dpw_test.npz`` (``imgname, center, scale, pose (N,72),
  shape (N,10), gender ('m'/'f')``): pose has the global orientation in the camera
  frame already. Box: ``center``, side ``scale * 200`` px (SPIN's convention).
* SPIN's Human3.6M Protocol-2 ``h36m_valid_protocol2.npz`` (``imgname, center, scale,
  S (N,24|17,4)`` 3D joints in metres with a confidence column, optionally
  ``pose``/``shape``). ``S`` with 24 joints is SPIN's J24 layout (LSP14 = J24 joints 0-12
  and 18, pelvis = mid-hip, as SPIN's eval); with 17 joints the H36M order.
* Official 3DPW ``sequenceFiles/<split>/*.pkl`` (Python-2 pickles of numpy arrays,
  read with a restricted unpickler that allows numpy arrays and plain containers only,
  never arbitrary code). World-frame SMPL parameters become camera-frame ground truth:
  ``R_orient_cam = R_cam @ R_orient_world`` with ``R_cam = cam_poses[frame][:3, :3]``;
  frames with ``campose_valid == 0`` are skipped; the box is the 2D keypoint box
  (``poses2d`` keypoints with confidence > 0) enlarged x1.2, square (as CLIFF/SPIN do).

``.npz`` files are read with ``allow_pickle=False``: string fields must be numpy unicode
or bytes arrays (what ``np.savez`` writes for lists of ``str``); a file that stores them
as pickled object arrays is refused with a message saying how to convert it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hmrcli import geometry as G
from hmrcli.body.safe_pickle import UnsafePickleError, _SmplUnpickler, _to_plain

__all__ = ["Sample", "DatasetError", "load_npz_arrays", "read_spin_npz", "read_3dpw_sequences", "load_dataset",
           "load_sequence_pickle", "DATASET_FILES"]

DATASET_FILES = {"3dpw": "3dpw_test.npz", "h36m": "h36m_valid_protocol2.npz"}
_GENDERS = {"m": "male", "male": "male", "f": "female", "female": "female", "n": "neutral", "neutral": "neutral"}


class DatasetError(ValueError):
    """A dataset file is missing or not in the expected layout; the message says what to do."""


@dataclass
class Sample:
    """One evaluated person. Units: pixels (box), radians axis-angle (pose), metres (joints).

    box: (cx, cy, b) square box, ``b`` its side in pixels; ``box_xyxy`` the same as corners.
    pose: (72,) SMPL axis-angle, joint 0 = global orientation in the camera frame, or None.
    betas: (10,) SMPL shape or None. gender: "male", "female" or "neutral".
    joints3d: (J, 4) ground-truth 3D joints with confidence (H36M), or None.
    """

    image: Path
    box: np.ndarray
    pose: np.ndarray | None
    betas: np.ndarray | None
    gender: str
    sequence: str
    frame: int = -1
    joints3d: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def box_xyxy(self) -> np.ndarray:
        cx, cy, b = (float(v) for v in self.box)
        return np.array([cx - b / 2, cy - b / 2, cx + b / 2, cy + b / 2])


def _strings(arr: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in arr.tolist()]


def _sequence_of(imgname: str, dataset: str) -> str:
    p = Path(imgname)
    if dataset == "h36m":
        stem = p.stem
        return stem.rsplit("_", 1)[0] if "_" in stem else stem
    return p.parent.name or p.stem


def load_npz_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of a SPIN/CLIFF ``.npz`` (``allow_pickle=False``), checked for the box keys
    ``imgname``, ``center``, ``scale``.

    Raises:
        DatasetError: missing file, pickled object arrays, or a box key missing.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except ValueError as e:
        raise DatasetError(
            f"{path}: holds pickled object arrays, which hmrcli does not load ({e}). Convert the "
            "string fields to plain arrays, e.g. np.savez(out, imgname=np.array(list(imgname), dtype=str), ...)"
        ) from e
    for k in ("imgname", "center", "scale"):
        if k not in d:
            raise DatasetError(f"{path}: missing field {k!r} (fields: {sorted(d)})")
    return d


def read_spin_npz(path: str | os.PathLike, dataset: str = "3dpw", image_root: str | os.PathLike | None = None) -> list[Sample]:
    """Read a SPIN-style ``3dpw_test.npz`` or ``h36m_valid_protocol2.npz`` (see module docs).
    Image paths are ``image_root / imgname`` (default: the npz's folder)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (the SPIN data release's {DATASET_FILES.get(dataset, '*.npz')})")
    root = Path(image_root) if image_root is not None else path.parent
    d = load_npz_arrays(path)
    names = _strings(d["imgname"])
    n = len(names)
    pose = d.get("pose")
    shape = d.get("shape")
    if dataset == "3dpw" and (pose is None or shape is None):
        raise DatasetError(f"{path}: a 3DPW file needs 'pose' and 'shape' (fields: {sorted(d)})")
    if dataset == "h36m" and "S" not in d:
        raise DatasetError(f"{path}: an H36M file needs 'S' 3D joints (fields: {sorted(d)})")
    genders = _strings(d["gender"]) if "gender" in d else ["neutral"] * n
    s3d = d.get("S")
    out = []
    for i in range(n):
        g = _GENDERS.get(genders[i].strip().lower())
        if g is None:
            raise DatasetError(f"{path}: unknown gender {genders[i]!r} at row {i}")
        out.append(Sample(
            image=root / names[i],
            box=np.array([*np.asarray(d["center"][i], dtype=np.float64)[:2], float(d["scale"][i]) * 200.0]),
            pose=None if pose is None else np.asarray(pose[i], dtype=np.float64).reshape(72),
            betas=None if shape is None else np.asarray(shape[i], dtype=np.float64)[:10],
            gender=g,
            sequence=_sequence_of(names[i], dataset),
            frame=i,
            joints3d=None if s3d is None else np.asarray(s3d[i], dtype=np.float64),
        ))
    return out


class _SequenceUnpickler(_SmplUnpickler):
    """numpy arrays, scalars, dtypes and builtin containers only (no chumpy, no scipy)."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(("chumpy", "scipy")):
            raise UnsafePickleError(f"{self._source}: refusing '{module}.{name}' in a 3DPW sequence file")
        try:
            return super().find_class(module, name)
        except UnsafePickleError:
            raise UnsafePickleError(
                f"{self._source}: refusing to load '{module}.{name}': a 3DPW sequence file holds only "
                "numpy arrays and plain containers") from None


def load_sequence_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """A 3DPW ``sequenceFiles/*/*.pkl`` file as a dict (restricted unpickler, latin-1 for Python 2)."""
    data = Path(path).read_bytes()
    obj = _to_plain(_SequenceUnpickler(io.BytesIO(data), str(path)).load(), str(path))
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


def keypoint_box(kp2d: np.ndarray, rescale: float = 1.2) -> np.ndarray | None:
    """(cx, cy, b) from (3, K) or (K, 3) keypoints (x, y, conf): the box of the confident
    keypoints, square side ``max(w, h) * rescale``; None without confident keypoints."""
    kp = np.asarray(kp2d, dtype=np.float64)
    if kp.shape[0] == 3 and kp.shape[1] != 3:
        kp = kp.T
    ok = kp[:, 2] > 0
    if not ok.any():
        return None
    lo, hi = kp[ok, :2].min(0), kp[ok, :2].max(0)
    c = (lo + hi) / 2
    return np.array([c[0], c[1], max(hi[0] - lo[0], hi[1] - lo[1]) * rescale])


def read_3dpw_sequences(root: str | os.PathLike, split: str = "test") -> list[Sample]:
    """Samples of the official 3DPW ``root/sequenceFiles/<split>/*.pkl`` (images expected at
    ``root/imageFiles/<sequence>/image_<frame:05d>.jpg``), camera-frame ground truth."""
    root = Path(root)
    folder = root / "sequenceFiles" / split
    files = sorted(folder.glob("*.pkl"))
    if not files:
        raise DatasetError(f"no 3DPW sequence files in {folder} (expected sequenceFiles/{split}/*.pkl)")
    out: list[Sample] = []
    for f in files:
        d = load_sequence_pickle(f)
        for k in ("poses", "betas", "cam_poses", "genders", "poses2d", "img_frame_ids", "campose_valid"):
            if k not in d:
                raise DatasetError(f"{f}: missing field {k!r}")
        seq = str(d.get("sequence", f.stem))
        cam = np.asarray(d["cam_poses"], dtype=np.float64)
        frames = np.asarray(d["img_frame_ids"]).astype(int)
        for p in range(len(d["poses"])):
            poses = np.asarray(d["poses"][p], dtype=np.float64)
            valid = np.asarray(d["campose_valid"][p]).astype(bool)
            betas = np.asarray(d["betas"][p], dtype=np.float64)[:10]
            g = _GENDERS.get(str(d["genders"][p]).strip().lower())
            if g is None:
                raise DatasetError(f"{f}: unknown gender {d['genders'][p]!r}")
            idx = np.nonzero(valid)[0]
            if len(idx) == 0:
                continue
            orient = cam[idx, :3, :3] @ G.axis_angle_to_rotmat(poses[idx, :3])
            orient_aa = G.rotmat_to_axis_angle(orient)
            for n, i in enumerate(idx):
                box = keypoint_box(np.asarray(d["poses2d"][p][i]))
                if box is None:
                    continue
                pose = poses[i].copy()
                pose[:3] = orient_aa[n]
                fr = int(frames[i])
                out.append(Sample(image=root / "imageFiles" / seq / f"image_{fr:05d}.jpg", box=box, pose=pose,
                                  betas=betas, gender=g, sequence=seq, frame=fr, extra={"person": p}))
    return out


def load_dataset(dataset: str, data_root: str | os.PathLike, split: str = "test") -> tuple[list[Sample], str]:
    """Samples of ``dataset`` ("3dpw" or "h36m") under ``data_root`` and a description of
    the source. 3DPW: the official ``sequenceFiles/<split>`` when present, else
    ``3dpw_<split>.npz``; H36M: ``h36m_valid_protocol2.npz``."""
    root = Path(data_root)
    if dataset == "3dpw":
        if (root / "sequenceFiles" / split).is_dir():
            return read_3dpw_sequences(root, split), f"{root / 'sequenceFiles' / split} (official 3DPW)"
        npz = root / f"3dpw_{split}.npz"
        if npz.is_file():
            return read_spin_npz(npz, "3dpw"), f"{npz} (SPIN-style)"
        raise DatasetError(f"3DPW not found under {root}: expected sequenceFiles/{split}/*.pkl (official) "
                           f"or 3dpw_{split}.npz (SPIN data release), with the images under imageFiles/")
    if dataset == "h36m":
        npz = root / DATASET_FILES["h36m"]
        if not npz.is_file():
            raise DatasetError(f"Human3.6M Protocol 2 not found: expected {npz} (SPIN data release) "
                               "with the images it names under that folder")
        return read_spin_npz(npz, "h36m"), f"{npz} (SPIN-style, Protocol 2)"
    raise DatasetError(f"unknown dataset {dataset!r} (3dpw or h36m)")
