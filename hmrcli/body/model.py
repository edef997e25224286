"""One interface over ``smplx.SMPL`` for the real SMPL files and the free default.

Conventions (both models):

* units: metres;
* body frame: SMPL's canonical axes, right-handed, +Y up, +Z the direction the
  body faces, +X the body's left, origin near the pelvis of the template;
* pose: 24 joint rotations in SMPL's kinematic order (``JOINT_NAMES``), either
  rotation matrices ``(B, 24, 3, 3)`` or axis-angle ``(B, 72)`` / ``(B, 24, 3)``,
  joint 0 being the global orientation;
* betas: ``(B, 10)`` shape coefficients of *that* model. The free model's
  betas are PCA coefficients of its own shape space and are **not** SMPL betas;
* translation: ``(B, 3)`` metres, added to every output point.

``device`` and ``dtype`` of the outputs follow ``pose``; large batches are
processed in chunks so batch sizes in the thousands fit in memory.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import smplx
import torch
from smplx.utils import Struct

from hmrcli import assets
from hmrcli.body.safe_pickle import load_smpl_pickle

__all__ = [
    "JOINT_NAMES",
    "SMPL_PARENTS",
    "COCO17_NAMES",
    "H36M17_NAMES",
    "BodyOutput",
    "BodyModel",
    "BodyModelNotFoundError",
    "FREE_MODEL_FILE",
    "SMPL_DOWNLOAD_HELP",
    "find_smpl_files",
    "find_h36m_regressor",
    "load_body_model",
    "read_model_file",
]

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)
SMPL_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21,
)
COCO17_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# Standard Human3.6M naming of SPIN's 17-joint regressor. SPIN's evaluation map to the 14 LSP
# joints ([6,5,4,1,2,3,16,15,14,...], docs/method.md §7) sends joints 6,5,4 to LSP's *right*
# leg, i.e. the left/right labels of the released regressor and this list may be swapped; the
# metrics only use the index map, applied to prediction and ground truth alike.
H36M17_NAMES: tuple[str, ...] = (
    "pelvis", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
    "left_ankle", "spine", "thorax", "neck_nose", "head", "left_shoulder", "left_elbow",
    "left_wrist", "right_shoulder", "right_elbow", "right_wrist",
)

# COCO-17 on the real SMPL mesh: face points are SMPL vertices (the indices smplx uses
# for SMPL/SMPL-H: nose 332, right eye 6260, left eye 2800, right ear 4071, left ear 583),
# body points are SMPL skeleton joints. Note SMPL's hip joints sit deeper in the pelvis
# than COCO's annotated hips.
_SMPL_COCO_VERTICES = {0: 332, 1: 2800, 2: 6260, 3: 583, 4: 4071}
_SMPL_COCO_JOINTS = {5: 16, 6: 17, 7: 18, 8: 19, 9: 20, 10: 21, 11: 1, 12: 2, 13: 4,
                     14: 5, 15: 7, 16: 8}

FREE_MODEL_FILE = "body/hmrcli_free_neutral.npz"

SMPL_FILENAMES: dict[str, tuple[str, ...]] = {
    g: (
        f"SMPL_{g.upper()}.pkl",
        f"SMPL_{g.upper()}.npz",
        f"basicmodel_{'neutral' if g == 'neutral' else g[0]}_lbs_10_207_0_v1.1.0.pkl",
        f"basicModel_{'neutral' if g == 'neutral' else g[0]}_lbs_10_207_0_v1.0.0.pkl",
    )
    for g in ("neutral", "male", "female")
}

SMPL_DOWNLOAD_HELP = (
    "SMPL is licence-gated and cannot be shipped with hmrcli. Register at "
    "https://smpl.is.tue.mpg.de/ and download 'SMPL for Python' (v1.1.0, "
    "basicmodel_{neutral,m,f}_lbs_10_207_0_v1.1.0.pkl); put the files in one folder "
    "(names SMPL_NEUTRAL.pkl / SMPL_MALE.pkl / SMPL_FEMALE.pkl or the original names, "
    ".pkl or .npz) and pass --smpl-dir DIR or set HMRCLI_SMPL_DIR=DIR. "
    "For H36M joints also put SPIN's J_regressor_h36m.npy there. "
    "Without SMPL, hmrcli uses its free body model (--body-model free)."
)


class BodyModelNotFoundError(assets.AssetNotFoundError):
    """A requested body model file is missing; the message says where to get it."""


@dataclass
class BodyOutput:
    """Posed body. All tensors on the pose's device/dtype, metres.

    vertices: (B, V, 3); joints: (B, 24, 3) SMPL skeleton joints;
    keypoints_coco: (B, 17, 3) COCO-17 keypoints (``COCO17_NAMES`` order);
    joints_h36m: (B, 17, 3) Human3.6M joints (``H36M17_NAMES``) or None when the
    model has no H36M regressor; rotmats: (B, 24, 3, 3) local joint rotations used.
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    keypoints_coco: torch.Tensor
    joints_h36m: torch.Tensor | None
    rotmats: torch.Tensor


@dataclass
class BodyModelInfo:
    name: str  # "smpl" or "free"
    gender: str
    path: Path
    num_vertices: int
    num_faces: int
    betas_are_smpl: bool
    has_h36m_regressor: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _to_rotmat(pose: torch.Tensor) -> torch.Tensor:
    """(B,24,3,3) | (B,72) | (B,24,3) -> (B,24,3,3)."""
    if pose.dim() == 4 and pose.shape[-2:] == (3, 3) and pose.shape[1] == 24:
        return pose
    if pose.dim() == 2 and pose.shape[1] == 72:
        pose = pose.reshape(-1, 24, 3)
    if pose.dim() == 3 and pose.shape[1:] == (24, 3):
        import roma  # start-up: roma imports torch._dynamo (~3 s), which hmrcli.body otherwise never needs

        return roma.rotvec_to_rotmat(pose)
    raise ValueError(
        f"pose must be rotation matrices (B,24,3,3) or axis-angle (B,72)/(B,24,3); got {tuple(pose.shape)}"
    )


def read_model_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an SMPL-layout model file (.pkl via the restricted unpickler, or .npz
    without pickle) into a dict of numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise BodyModelNotFoundError(f"{path}: no such file")
    if path.suffix == ".pkl":
        try:
            data = load_smpl_pickle(path)
        except pickle.UnpicklingError as e:  # UnsafePickleError included: refused before any code runs
            raise ValueError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except ValueError as e:
            raise ValueError(
                f"{path}: this .npz holds pickled objects, which hmrcli does not load "
                f"({e}); convert it to plain arrays or use the original .pkl"
            ) from e
    else:
        raise ValueError(f"{path}: unknown body model file type (expected .pkl or .npz)")
    required = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{path}: not an SMPL-layout model file, missing arrays {missing}")
    return {k: np.asarray(v) for k, v in data.items() if not isinstance(v, (str, bytes))}


def find_smpl_files(smpl_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """SMPL model files found in the configured folder (and its ``smpl/`` subfolder),
    by gender."""
    root = assets.smpl_dir(smpl_dir)
    found: dict[str, Path] = {}
    if root is None:
        return found
    for folder in (root, root / "smpl", root / "models"):
        if not folder.is_dir():
            continue
        for gender, names in SMPL_FILENAMES.items():
            if gender in found:
                continue
            for n in names:
                if (folder / n).is_file():
                    found[gender] = folder / n
                    break
    return found


def find_h36m_regressor(smpl_dir: str | os.PathLike | None = None) -> Path | None:
    root = assets.smpl_dir(smpl_dir)
    if root is None:
        return None
    for folder in (root, root / "smpl", root / "data"):
        p = folder / "J_regressor_h36m.npy"
        if p.is_file():
            return p
    return None


class BodyModel:
    """A posable SMPL-layout body model (see the module docstring for conventions)."""

    def __init__(
        self,
        data: dict[str, np.ndarray],
        info: BodyModelInfo,
        coco_regressor: tuple[np.ndarray, np.ndarray] | None = None,
        h36m_regressor: np.ndarray | None = None,
        num_betas: int = 10,
    ) -> None:
        self.info = info
        self.num_betas = num_betas
        # Built in float64 from the file's arrays; float32 copies are cast from it.
        # smplx prints notices to stdout, which must stay clean for JSON-lines output.
        with contextlib.redirect_stdout(io.StringIO()):
            self._base = smplx.SMPL(
                model_path=str(info.path),
                data_struct=Struct(**data),
                num_betas=num_betas,
                create_betas=False,
                create_global_orient=False,
                create_body_pose=False,
                create_transl=False,
                gender=info.gender,
                dtype=torch.float64,
            ).eval()
        for p in self._base.parameters():
            p.requires_grad_(False)
        self.faces = np.asarray(data["f"], dtype=np.int64)
        self.num_vertices = int(data["v_template"].shape[0])
        self.parents = SMPL_PARENTS
        self.joint_names = JOINT_NAMES
        self.keypoint_names = COCO17_NAMES
        v = self.num_vertices
        if coco_regressor is None:
            coco_regressor = (np.zeros((17, v)), np.zeros((17, 24)))
        self._coco_v = torch.as_tensor(np.asarray(coco_regressor[0], dtype=np.float64))
        self._coco_j = torch.as_tensor(np.asarray(coco_regressor[1], dtype=np.float64))
        self._h36m = None if h36m_regressor is None else torch.as_tensor(np.asarray(h36m_regressor, dtype=np.float64))
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    # -- internals -----------------------------------------------------------------
    def _on(self, device: torch.device, dtype: torch.dtype):
        key = (device, dtype)
        if key not in self._cache:
            m = copy.deepcopy(self._base).to(device=device, dtype=dtype)
            h = None if self._h36m is None else self._h36m.to(device, dtype)
            self._cache[key] = (m, self._coco_v.to(device, dtype), self._coco_j.to(device, dtype), h)
        return self._cache[key]

    @property
    def has_h36m(self) -> bool:
        return self._h36m is not None

    # -- read-only model arrays (float64 numpy copies) -------------------------------
    @property
    def skinning_weights(self) -> np.ndarray:
        """(V, 24) linear-blend-skinning weights (rows sum to 1)."""
        return self._base.lbs_weights.detach().cpu().numpy().copy()

    @property
    def joint_regressor(self) -> np.ndarray:
        """(24, V) regressor of the skeleton joints from the shaped rest vertices."""
        return self._base.J_regressor.detach().cpu().numpy().copy()

    @property
    def shapedirs(self) -> np.ndarray:
        """(V, 3, num_betas) shape blend shapes."""
        return self._base.shapedirs.detach().cpu().numpy().copy()

    @property
    def posedirs(self) -> np.ndarray:
        """(207, V*3) pose-corrective blend shapes (smplx layout)."""
        return self._base.posedirs.detach().cpu().numpy().copy()

    @property
    def coco_regressor(self) -> tuple[np.ndarray, np.ndarray]:
        """(17, V) vertex and (17, 24) joint weights: keypoints_coco = Wv @ vertices + Wj @ joints."""
        return self._coco_v.numpy().copy(), self._coco_j.numpy().copy()

    def rest_joints(self, betas: np.ndarray | None = None) -> np.ndarray:
        """(24, 3) skeleton joints of the unposed body with ``betas`` (mean shape when None)."""
        v = self._base.v_template.detach().cpu().numpy()
        if betas is not None:
            b = np.zeros(self.num_betas)
            b[: len(betas)] = np.asarray(betas, dtype=np.float64)
            v = v + self.shapedirs @ b
        return self.joint_regressor @ v

    def template(self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.Tensor:
        """Rest-pose mean-shape vertices (V, 3)."""
        return self._base.v_template.to(device=device, dtype=dtype).clone()

    # -- public --------------------------------------------------------------------
    def __call__(
        self,
        pose: torch.Tensor,
        betas: torch.Tensor | None = None,
        transl: torch.Tensor | None = None,
        chunk_size: int = 256,
    ) -> BodyOutput:
        """Pose the body. See :class:`BodyOutput`."""
        pose = torch.as_tensor(pose)
        if not pose.is_floating_point():
            pose = pose.float()
        rot = _to_rotmat(pose)
        bsz = rot.shape[0]
        device, dtype = rot.device, rot.dtype
        if betas is None:
            betas = torch.zeros(bsz, self.num_betas, device=device, dtype=dtype)
        betas = torch.as_tensor(betas, device=device, dtype=dtype)
        if betas.dim() != 2 or betas.shape[0] not in (1, bsz) or betas.shape[1] > self.num_betas:
            raise ValueError(f"betas must be (B, <= {self.num_betas}) with B = {bsz}; got {tuple(betas.shape)}")
        if betas.shape[1] < self.num_betas:
            betas = torch.nn.functional.pad(betas, (0, self.num_betas - betas.shape[1]))
        betas = betas.expand(bsz, -1)
        if transl is not None:
            transl = torch.as_tensor(transl, device=device, dtype=dtype)
            if transl.shape != (bsz, 3) and transl.shape != (1, 3):
                raise ValueError(f"transl must be (B, 3); got {tuple(transl.shape)}")
            transl = transl.expand(bsz, 3)
        model, coco_v, coco_j, h36m = self._on(device, dtype)
        verts, joints = [], []
        with torch.no_grad() if not (rot.requires_grad or betas.requires_grad) else contextlib.nullcontext():
            for s in range(0, bsz, chunk_size):
                e = min(bsz, s + chunk_size)
                out = model(
                    betas=betas[s:e],
                    global_orient=rot[s:e, :1],
                    body_pose=rot[s:e, 1:],
                    pose2rot=False,
                )
                verts.append(out.vertices)
                joints.append(out.joints[:, :24])
        v = torch.cat(verts) if len(verts) != 1 else verts[0]
        j = torch.cat(joints) if len(joints) != 1 else joints[0]
        if transl is not None:
            v = v + transl[:, None]
            j = j + transl[:, None]
        kp = torch.einsum("kv,bvc->bkc", coco_v, v) + torch.einsum("kj,bjc->bkc", coco_j, j)
        jh = None if h36m is None else torch.einsum("kv,bvc->bkc", h36m, v)
        return BodyOutput(vertices=v, joints=j, keypoints_coco=kp, joints_h36m=jh, rotmats=rot)

    def __repr__(self) -> str:
        i = self.info
        return f"BodyModel(name={i.name!r}, gender={i.gender!r}, V={i.num_vertices}, path={str(i.path)!r})"


def _load_free() -> BodyModel:
    path = assets.asset_path(FREE_MODEL_FILE)
    data = read_model_file(path)
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    coco_v = data.get("coco17_regressor")
    if coco_v is None:
        raise ValueError(f"{path}: free body model lacks its 'coco17_regressor' array")
    info = BodyModelInfo(
        name="free",
        gender="neutral",
        path=path,
        num_vertices=int(data["v_template"].shape[0]),
        num_faces=int(data["f"].shape[0]),
        betas_are_smpl=False,
        has_h36m_regressor=False,
        extra={"metadata": meta},
    )
    return BodyModel(data, info, coco_regressor=(coco_v, np.zeros((17, 24))))


def _load_smpl(gender: str, smpl_dir: str | os.PathLike | None, h36m_regressor: str | os.PathLike | None) -> BodyModel:
    files = find_smpl_files(smpl_dir)
    if gender not in files:
        root = assets.smpl_dir(smpl_dir)
        where = f"in {root}" if root is not None else "(no SMPL folder configured)"
        raise BodyModelNotFoundError(f"SMPL {gender} model not found {where}. {SMPL_DOWNLOAD_HELP}")
    path = files[gender]
    data = read_model_file(path)
    v = int(data["v_template"].shape[0])
    coco_v = np.zeros((17, v))
    coco_j = np.zeros((17, 24))
    for k, vi in _SMPL_COCO_VERTICES.items():
        coco_v[k, vi] = 1.0
    for k, ji in _SMPL_COCO_JOINTS.items():
        coco_j[k, ji] = 1.0
    reg_path = Path(h36m_regressor) if h36m_regressor else find_h36m_regressor(smpl_dir)
    reg = None
    if reg_path is not None:
        reg = np.load(reg_path, allow_pickle=False)
        if reg.shape != (17, v):
            raise ValueError(f"{reg_path}: expected an H36M joint regressor of shape (17, {v}), got {reg.shape}")
    info = BodyModelInfo(
        name="smpl",
        gender=gender,
        path=path,
        num_vertices=v,
        num_faces=int(data["f"].shape[0]),
        betas_are_smpl=True,
        has_h36m_regressor=reg is not None,
        extra={"h36m_regressor": str(reg_path) if reg is not None else None},
    )
    return BodyModel(data, info, coco_regressor=(coco_v, coco_j), h36m_regressor=reg)


def load_body_model(
    name: str = "auto",
    gender: str = "neutral",
    smpl_dir: str | os.PathLike | None = None,
    h36m_regressor: str | os.PathLike | None = None,
) -> BodyModel:
    """Load a body model.

    name: ``"smpl"`` (the user's SMPL files: ``smpl_dir``, ``$HMRCLI_SMPL_DIR``, or
    ``$HMRCLI_HOME/smpl``), ``"free"`` (the shipped anny-derived model, neutral only),
    or ``"auto"`` (SMPL when the requested gender's file is found, else the free model
    for ``gender="neutral"``).
    """
    gender = gender.lower()
    if gender not in ("neutral", "male", "female"):
        raise ValueError(f"gender must be neutral, male or female; got {gender!r}")
    if name == "auto":
        name = "smpl" if gender in find_smpl_files(smpl_dir) or gender != "neutral" else "free"
    if name == "smpl":
        return _load_smpl(gender, smpl_dir, h36m_regressor)
    if name == "free":
        if gender != "neutral":
            raise ValueError(
                "the free body model has one neutral body only; male/female bodies need the "
                f"SMPL files. {SMPL_DOWNLOAD_HELP}"
            )
        return _load_free()
    raise ValueError(f"unknown body model {name!r} (choose smpl, free or auto)")
