#!/usr/bin/env python
"""Check hmrcli's free body model against anny, the model it is derived from.

Usage::

    python scripts/check_free_body_model.py [--model models/body/hmrcli_free_neutral.npz]
        [--n-poses 10] [--n-shapes 10] [--pose-sigma 0.3] [--seed 1234] [--max-mean-mm 3]

Prints one JSON object (mean / max / p99 vertex distance in mm over all shapes and poses,
per-pose and per-shape figures, anny and smplx versions) and exits with status 1 when the
mean distance exceeds ``--max-mean-mm``. ``check_agreement()`` returns the same dict, for
tests.

What is compared
----------------
For each body shape (anny's default phenotype, every phenotype at 0.5, plus ``n_shapes``
phenotypes drawn from anny's shape distribution with ``seed``) and each of ``n_poses``
random SMPL poses (axis-angle of all 24 joints, global orientation included, i.i.d.
N(0, pose_sigma^2) per component):

* **derived model**: the .npz loaded into plain ``smplx.SMPL`` (through ``data_struct``),
  posed with ``betas`` = the least-squares projection of anny's T-posed rest mesh of that
  phenotype onto the model's shape space, ``global_orient`` / ``body_pose`` = the pose;
* **anny**: the same phenotype posed with anny's own rig (its 104 bones, its bone heads as
  pivots, its per-bone skinning weights and LBS), the pose being mapped onto anny's bones
  as below; the result is converted to SMPL axes with the same fixed transform the model
  was built with (the pelvis joint of the T-posed anny body at the origin). No alignment
  is fitted.

SMPL pose -> anny bones
-----------------------
Every anny bone belongs to one SMPL joint group (``BONE_GROUPS`` in
``build_free_body_model.py``); the *first bones* of a group are those whose parent is in
another group (one per group, five for the foot (toes) and hand (fingers) groups). Posing
uses forward kinematics with world-aligned local rotations: bone b's skinning transform is
``T_b = T_parent(b) o Rot(D_b about c_b)`` (rotations and pivots in anny's rest
coordinates).

* anny's rest pose is an A-pose; the model's rest pose is a T-pose. The T-pose is
  ``reference_pose`` (fixed rotations from anny's default body): D_b^T = I except
  upperarm01, lowerarm01 and wrist (each a group's first bone); with pivots at the bone
  heads this gives the T-pose transforms T_b^T and world rotations G_b^T of each body.
* the SMPL rotation of joint j is taken into anny's axes, R'_j = C^T R_j C
  (C = ``ANNY_TO_SMPL``: anny is +Z up, -Y forward).
* the first bone b of group j, whose parent p belongs to the parent joint's group, gets
  ``D_b = (G_p^T)^T R'_j G_p^T D_b^T`` — the joint rotation expressed in the frame the
  parent bone has in the T-pose (G_p^T = I except below the shoulder), then the bone's own
  T-pose rotation — about the pivot ``c_b = (T_p^T)^-1 (J_j^T)``, the group's T-pose joint
  taken back to rest coordinates (for one-bone-rooted groups this is simply the bone's head;
  for the toes and fingers it is the mean of the first toe/finger heads, so the five chains
  turn rigidly about one point, as the SMPL joint does). The root bone gets R'_0 about its
  head.
* every other bone gets its T-pose rotation, which is the identity: it follows its parent
  rigidly.

By induction T_b = S_j o T_b^T, S_j being the SMPL-style transform of joint j (rotation
about anny's own T-pose joint positions). The bones' world poses W_b = T_b P_b (P_b: anny's
rest bone poses) go through ``anny.Anny.forward(..., pose_parameterization='world')``. (anny's
'local-*' parameterizations are not used: their zero pose is anny's shape-independent
reference orientation, not its rest pose, so identity deltas would not reproduce the rest
mesh.)

The remaining differences are the model's approximations: the 10-component shape space,
the regressed joints (pivots) versus anny's bone heads, and re-skinning a T-posed mesh with
merged weights versus skinning anny's A-pose mesh directly (LBS of an LBS is not an LBS).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_free_body_model as B  # noqa: E402

DEFAULT_MODEL = B.DEFAULT_OUT_DIR / f"{B.MODEL_BASENAME}.npz"


def load_smplx_model(path: Path, dtype=torch.float64):
    """The .npz (plain arrays, no pickle) in plain smplx.SMPL."""
    import smplx
    from smplx.utils import Struct

    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    with contextlib.redirect_stdout(sys.stderr):  # smplx prints a note about 10 betas
        model = smplx.SMPL(
            model_path=str(path),
            data_struct=Struct(**data),
            num_betas=data["shapedirs"].shape[-1],
            create_betas=False,
            create_global_orient=False,
            create_body_pose=False,
            create_transl=False,
        ).to(dtype=dtype)
    return model, data


def anny_pose_rotations(rig: B.Rig, tp: dict, rotmats_smpl: torch.Tensor):
    """Per-bone rotations and pivots (see the module docstring) for SMPL rotations
    ``rotmats_smpl`` (P, 24, 3, 3) on one T-posed anny body ``tp`` (batch 1).
    Returns (D (P, K, 3, 3), c (P, K, 3))."""
    P = rotmats_smpl.shape[0]
    dtype = rotmats_smpl.dtype
    C = torch.as_tensor(B.ANNY_TO_SMPL, dtype=dtype)
    Rp = C.T @ rotmats_smpl @ C  # anny axes
    heads = tp["rest"]["rest_bone_heads"][0]
    D_t, G_t, t_t = tp["rotations"][0], tp["R"][0], tp["t"][0]
    J_t = tp["joints"][0]
    K = len(rig.labels)
    D = D_t.expand(P, K, 3, 3).clone()
    c = heads.expand(P, K, 3).clone()
    for j, roots in enumerate(rig.group_roots):
        for b in roots:
            p = rig.parents[b]
            if p < 0:
                D[:, b] = Rp[:, j] @ D_t[b]
                c[:, b] = J_t[j]
                continue
            if len(roots) > 1:
                assert torch.allclose(D_t[b], torch.eye(3, dtype=dtype)), rig.labels[b]
            G = G_t[p]
            D[:, b] = G.T @ Rp[:, j] @ G @ D_t[b]
            c[:, b] = G.T @ (J_t[j] - t_t[p])
    non_roots = [b for b in range(K) if b not in {r for rs in rig.group_roots for r in rs}]
    assert torch.allclose(D_t[non_roots], torch.eye(3, dtype=dtype).expand(len(non_roots), 3, 3))
    return D, c


@torch.no_grad()
def check_agreement(
    model_path: str | Path = DEFAULT_MODEL,
    n_poses: int = 10,
    n_shapes: int = 10,
    pose_sigma: float = 0.3,
    seed: int = 1234,
    anny_model=None,
) -> dict:
    """Compare the derived model posed through smplx with anny's own skinning; see the module
    docstring. Returns a JSON-able dict (distances in mm)."""
    import roma

    t0 = time.time()
    model_path = Path(model_path)
    smpl, data = load_smplx_model(model_path)
    model = anny_model if anny_model is not None else B.load_anny()
    t_load = time.time() - t0
    rig = B.Rig(model)
    tpose_rot, origin = B.reference_pose(model, rig)
    dtype = model.dtype
    V = data["v_template"].shape[0]
    v_template = torch.as_tensor(data["v_template"], dtype=dtype)
    Sd = torch.as_tensor(data["shapedirs"], dtype=dtype).reshape(V * 3, -1)
    J_reg = torch.as_tensor(data["J_regressor"], dtype=dtype)

    labels = ["anny_default_phenotype"] + [f"sampled_{i}" for i in range(n_shapes)]
    mean_ph = B.default_phenotypes(model)
    sampled = B.sample_phenotypes(model, n_shapes, seed) if n_shapes > 0 else None

    gen = torch.Generator().manual_seed(seed)
    rotvecs = pose_sigma * torch.randn((n_poses, 24, 3), generator=gen, dtype=dtype)
    rotmats = roma.rotvec_to_rotmat(rotvecs)

    per_pose, per_shape, all_d = [], [], []
    for s, label in enumerate(labels):
        ph = mean_ph if s == 0 else B._slice(sampled, s - 1, s)
        tp = B.anny_tpose(model, rig, ph, tpose_rot, origin)
        v_t = tp["vertices_smpl"][0]
        betas = torch.linalg.lstsq(Sd, (v_t - v_template).reshape(-1, 1)).solution[:, 0]
        v_shaped = v_template + (Sd @ betas).reshape(V, 3)
        rest_err = (v_shaped - v_t).norm(dim=-1)
        joint_err = (J_reg @ v_shaped - tp["joints_smpl"][0]).norm(dim=-1)

        # anny, posed with its own rig.
        D, c = anny_pose_rotations(rig, tp, rotmats)
        R, t = B.bone_fk(rig.parents, D, c)
        ph_p = {k: v.expand(n_poses) for k, v in ph.items()}
        rest_poses = tp["rest"]["rest_bone_poses"].expand(n_poses, -1, -1, -1)
        v_anny = B.to_smpl_axes(B.skin_with_anny(model, ph_p, R, t, rest_poses),
                                tp["origin"][:1].expand(n_poses, 3))
        heads = tp["rest"]["rest_bone_heads"].expand(n_poses, -1, -1)
        j_anny = B.to_smpl_axes(rig.joints_from_heads((R @ heads[..., None])[..., 0] + t),
                                tp["origin"][:1].expand(n_poses, 3))
        # derived model, through smplx.
        out = smpl(
            betas=betas[None].expand(n_poses, -1),
            global_orient=rotvecs[:, 0],
            body_pose=rotvecs[:, 1:].reshape(n_poses, -1),
        )
        d = (out.vertices - v_anny).norm(dim=-1) * 1e3  # (P, V) mm
        dj = (out.joints[:, :24] - j_anny).norm(dim=-1) * 1e3
        all_d.append(d)
        for p in range(n_poses):
            per_pose.append({
                "shape": label, "pose": p,
                "pose_angle_deg_mean": float(rotvecs[p].norm(dim=-1).mean()) * 180.0 / np.pi,
                "mean_mm": float(d[p].mean()), "max_mm": float(d[p].max()),
                "p99_mm": float(torch.quantile(d[p], 0.99)),
                "joint_mean_mm": float(dj[p].mean()), "joint_max_mm": float(dj[p].max()),
            })
        per_shape.append({
            "shape": label,
            "phenotype": {k: round(float(v[0]), 4) for k, v in ph.items()},
            "betas": [round(float(b), 4) for b in betas],
            "height_m": float(v_t[:, 1].max() - v_t[:, 1].min()),
            "rest_shape_projection_mean_mm": float(rest_err.mean() * 1e3),
            "rest_shape_projection_max_mm": float(rest_err.max() * 1e3),
            "rest_joint_mean_mm": float(joint_err.mean() * 1e3),
            "rest_joint_max_mm": float(joint_err.max() * 1e3),
            "posed_mean_mm": float(d.mean()), "posed_max_mm": float(d.max()),
            "posed_joint_mean_mm": float(dj.mean()), "posed_joint_max_mm": float(dj.max()),
        })
    d = torch.cat(all_d)
    sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    return {
        "model": str(model_path),
        "model_sha256": sha,
        "anny_version": importlib.metadata.version("anny"),
        "smplx_version": importlib.metadata.version("smplx"),
        "torch_version": torch.__version__,
        "n_shapes": len(labels),
        "n_poses": n_poses,
        "pose_sigma_rad": pose_sigma,
        "pose_distribution": "axis-angle of all 24 joints (global orientation included), "
                             "i.i.d. N(0, pose_sigma^2) per component",
        "seed": seed,
        "mean_mm": float(d.mean()),
        "median_mm": float(d.median()),
        "p99_mm": float(torch.quantile(d.flatten()[:: max(1, d.numel() // 1_000_000)], 0.99)),
        "max_mm": float(d.max()),
        "per_shape": per_shape,
        "per_pose": per_pose,
        "seconds": {"load": round(t_load, 1), "total": round(time.time() - t0, 1)},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Compare the free body model with anny's own skinning.")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--n-poses", type=int, default=10)
    ap.add_argument("--n-shapes", type=int, default=10, help="random shapes besides anny's default one")
    ap.add_argument("--pose-sigma", type=float, default=0.3, help="radians, per axis-angle component")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--max-mean-mm", type=float, default=3.0)
    args = ap.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON object alone
        res = check_agreement(args.model, args.n_poses, args.n_shapes, args.pose_sigma, args.seed)
    res["max_mean_mm"] = args.max_mean_mm
    res["passed"] = res["mean_mm"] <= args.max_mean_mm
    print(json.dumps(res, indent=2))
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
