"""Mesh-recovery metrics, exactly as SPIN / CLIFF / Multi-RoI evaluate 3DPW (docs/method.md §7).

Protocol:

* joints: the 17 Human3.6M joints regressed from the mesh vertices with SPIN's
  ``J_regressor_h36m.npy`` are reduced to 14 LSP joints
  ``H36M_TO_LSP14 = [6,5,4,1,2,3,16,15,14,11,12,13,8,10]``; prediction and ground
  truth are each centred on *their own* H36M joint 0 (pelvis) taken before the reduction;
* MPJPE: mean Euclidean joint distance after pelvis centring;
* PA-MPJPE: the same after a per-sample similarity Procrustes alignment of the
  prediction onto the ground truth (rotation with the reflection fix, i.e. a proper
  rotation with det = +1, isotropic scale, translation);
* PVE: mean Euclidean distance over all mesh vertices after pelvis centring
  (H36M joint 0), no Procrustes.

Units: inputs are metres, every metric returned is in **millimetres** (x 1000).
All functions are batched over the leading axis and accept numpy arrays or torch
tensors (computed in float64 numpy); per-sample values are returned as ``(B,)`` arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import roma
import torch

__all__ = [
    "H36M_TO_LSP14",
    "similarity_procrustes",
    "lsp14_from_h36m",
    "mpjpe",
    "pa_mpjpe",
    "pve",
    "mesh_metrics",
]

H36M_TO_LSP14: tuple[int, ...] = (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10)
H36M_PELVIS = 0
M_TO_MM = 1000.0


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _batched(x: Any, name: str) -> np.ndarray:
    a = _np(x)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"{name} must be (B, N, 3) points; got {a.shape}")
    return a


def similarity_procrustes(pred: Any, gt: Any) -> np.ndarray:
    """Align ``pred`` onto ``gt`` per sample with the best similarity transform
    ``s R x + t`` (least squares, Umeyama; R a proper rotation: the reflection an SVD can
    produce is excluded, as SPIN's ``compute_similarity_transform`` does; computed by roma's
    ``rigid_points_registration``). (B, N, 3) -> aligned (B, N, 3)."""
    p, g = _batched(pred, "pred"), _batched(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ")
    r, t, scale = roma.rigid_points_registration(torch.from_numpy(p), torch.from_numpy(g), compute_scaling=True)
    aligned = scale[:, None, None] * torch.einsum("bij,bnj->bni", r, torch.from_numpy(p)) + t[:, None, :]
    return aligned.numpy()


def lsp14_from_h36m(joints_h36m: Any) -> np.ndarray:
    """(B, 17, 3) H36M joints -> (B, 14, 3) LSP joints centred on H36M joint 0 (pelvis)."""
    j = _batched(joints_h36m, "joints_h36m")
    if j.shape[1] != 17:
        raise ValueError(f"expected 17 H36M joints, got {j.shape[1]}")
    return j[:, list(H36M_TO_LSP14)] - j[:, [H36M_PELVIS]]


def _mean_dist_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1).mean(axis=-1) * M_TO_MM


def mpjpe(pred_joints: Any, gt_joints: Any) -> np.ndarray:
    """Per-sample MPJPE (mm) of already-centred joints (B, J, 3) in metres."""
    p, g = _batched(pred_joints, "pred"), _batched(gt_joints, "gt")
    return _mean_dist_mm(p, g)


def pa_mpjpe(pred_joints: Any, gt_joints: Any) -> np.ndarray:
    """Per-sample PA-MPJPE (mm): MPJPE after :func:`similarity_procrustes`."""
    g = _batched(gt_joints, "gt")
    return _mean_dist_mm(similarity_procrustes(pred_joints, g), g)


def pve(pred_vertices: Any, gt_vertices: Any, pred_pelvis: Any, gt_pelvis: Any) -> np.ndarray:
    """Per-sample PVE (mm): vertices (B, V, 3) each centred on its pelvis (B, 3), no Procrustes."""
    pv, gv = _batched(pred_vertices, "pred_vertices"), _batched(gt_vertices, "gt_vertices")
    pp, gp = _np(pred_pelvis).reshape(-1, 1, 3), _np(gt_pelvis).reshape(-1, 1, 3)
    return _mean_dist_mm(pv - pp, gv - gp)


def mesh_metrics(pred_vertices: Any, gt_vertices: Any, h36m_regressor: Any) -> dict[str, np.ndarray]:
    """MPJPE, PA-MPJPE and PVE (mm, per sample) from predicted and ground-truth meshes
    (B, V, 3, metres) and the (17, V) H36M joint regressor, per the protocol above."""
    pv, gv = _batched(pred_vertices, "pred_vertices"), _batched(gt_vertices, "gt_vertices")
    if pv.shape != gv.shape:
        raise ValueError(f"pred_vertices {pv.shape} and gt_vertices {gv.shape} differ")
    reg = _np(h36m_regressor)
    if reg.shape != (17, pv.shape[1]):
        raise ValueError(f"H36M regressor must be (17, {pv.shape[1]}); got {reg.shape}")
    pj, gj = np.einsum("kv,bvc->bkc", reg, pv), np.einsum("kv,bvc->bkc", reg, gv)
    p14, g14 = lsp14_from_h36m(pj), lsp14_from_h36m(gj)
    return {
        "MPJPE": mpjpe(p14, g14),
        "PA-MPJPE": pa_mpjpe(p14, g14),
        "PVE": pve(pv, gv, pj[:, H36M_PELVIS], gj[:, H36M_PELVIS]),
    }
