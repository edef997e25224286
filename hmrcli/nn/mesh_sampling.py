"""Mesh down-/up-sampling between a body model's mesh and PointHMR's coarse meshes.

PointHMR (supplementary §3.2) regresses 431 coarse vertices, up-samples them to 1,732 and
then to SMPL's 6,890 with the pre-defined matrices of COMA (Ranjan et al., ECCV 2018) and
supervises every level with the ground truth down-sampled the same way. Those matrices are
SMPL assets (licence-gated, and tied to SMPL's 6,890-vertex topology); hmrcli derives the
equivalent for whichever body model it trains with (the free 13,718-vertex model it ships,
or SMPL from the user's files) with :func:`derive_mesh_sampling`:

1. **decimate** with quadric edge collapse (Garland & Heckbert 1997), the same family of
   algorithm as COMA's, through the maintained ``fast-simplification`` package (pyvista;
   ``pip install fast-simplification``, the ``[pointhmr]`` extra): full mesh -> ``levels[0]``
   vertices (1,732) -> ``levels[1]`` vertices (431), each level decimated from the previous
   one (COMA's successive factor-4 reductions). The face budget is set from the mesh's Euler
   characteristic so the vertex count comes out exact (re-tried with a corrected budget
   otherwise);
2. **down-sampling = vertex selection** (COMA's ``D`` keeps a subset of the vertices): every
   decimated vertex is snapped to a distinct vertex of the finer level (nearest first, then
   the next-nearest free one), so a coarse ground truth is the fine ground truth indexed;
3. **up-sampling = barycentric interpolation** (COMA's ``U``): every vertex of the finer
   level is projected onto the closest triangle of the coarser mesh (template pose) and
   written as the barycentric combination of that triangle's three vertices;
4. the **graph distance** (hops along mesh edges) between the coarse vertices, for
   PointHMR's progressive attention masking (thresholds 7/5/3/1).

The arrays are small (integer indices and weights, not dense matrices) and live in the
PointHMR model's buffers, so a checkpoint carries the sampling it was trained with and
inference needs neither the decimation library nor the SMPL files. For the free body model
the result is shipped (``models/mesh_sampling/free_neutral_1732_431.npz``, written by
``scripts/derive_mesh_sampling.py``); for SMPL ``hmrcli train`` derives it from the user's
files at the start of a PointHMR run (deterministic, well under a second).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmrcli import assets

__all__ = [
    "LEVELS",
    "MeshSampling",
    "FREE_MESH_SAMPLING_FILE",
    "derive_mesh_sampling",
    "load_mesh_sampling",
    "upsample",
]

#: PointHMR's vertex counts: the intermediate and the coarse (token) mesh.
LEVELS = (1732, 431)
FREE_MESH_SAMPLING_FILE = "mesh_sampling/free_neutral_1732_431.npz"
HOP_CAP = 255  # hop distances are stored as uint8; farther than this is "far"


@dataclass
class MeshSampling:
    """Down/up-sampling between the full mesh (V vertices) and the levels (V1, V0).

    down1: (V1,) int64 full-mesh vertex of each mid-level vertex; down0: (V0,) int64
    full-mesh vertex of each coarse vertex (so ``gt[:, down0]`` is the coarse ground truth);
    up0_idx/up0_w: (V1, 3) int64 / float32, mid vertex = sum_k w[k] * coarse[idx[k]];
    up1_idx/up1_w: (V, 3), full vertex = sum_k w[k] * mid[idx[k]];
    hops0: (V0, V0) uint8 edge-hop distance on the coarse mesh (capped at 255);
    faces0: (F0, 3) int64 coarse-mesh triangles (for drawing; not needed by the network).
    """

    down1: np.ndarray
    down0: np.ndarray
    up0_idx: np.ndarray
    up0_w: np.ndarray
    up1_idx: np.ndarray
    up1_w: np.ndarray
    hops0: np.ndarray
    faces0: np.ndarray

    @property
    def num_vertices(self) -> int:
        return int(self.up1_idx.shape[0])

    @property
    def levels(self) -> tuple[int, int]:
        return int(self.down1.shape[0]), int(self.down0.shape[0])

    def save(self, path: str | os.PathLike) -> None:
        import io

        from hmrcli.files import atomic_write_bytes

        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: getattr(self, k) for k in self.__dataclass_fields__})
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def from_state_dict(cls, sd: dict[str, Any]) -> "MeshSampling":
        """The sampling a PointHMR checkpoint carries as model buffers (``down0``, ``down1``,
        ``up0_idx``, ``up0_w``, ``up1_idx``, ``up1_w``, ``hops0``; ``faces0`` is not a buffer
        and comes back empty). Raises KeyError naming a missing buffer."""
        arrays = {}
        for k in cls.__dataclass_fields__:
            if k == "faces0":
                continue
            if k not in sd:
                raise KeyError(f"no mesh-sampling buffer {k!r} in the checkpoint")
            v = sd[k]
            arrays[k] = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        return cls(**arrays, faces0=np.zeros((0, 3), np.int64))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MeshSampling":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(**{k: z[k] for k in cls.__dataclass_fields__})
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a mesh-sampling file ({e})") from e


def upsample(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, Nc, C) coarse values -> (B, Nf, C): ``out[:, i] = sum_k w[i, k] x[:, idx[i, k]]``."""
    return torch.einsum("bnkc,nk->bnc", x[:, idx], w.to(x.dtype))


def _euler_components(faces: np.ndarray, n_vertices: int) -> int:
    """V - E + F of the mesh (2 per closed genus-0 component)."""
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    n_edges = len(np.unique(e, axis=0))
    return n_vertices - n_edges + len(faces)


def _decimate(vertices: np.ndarray, faces: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        import fast_simplification
    except ImportError:
        raise ImportError("deriving PointHMR's mesh sampling needs the fast-simplification package "
                          "(pip install fast-simplification, or hmrcli[pointhmr])") from None
    # closed manifold: E = 3F/2, so V - E + F = chi gives F = 2 (V - chi) for the target V
    chi = _euler_components(faces, len(vertices))
    budget = max(4, 2 * (target - chi))
    for _ in range(8):
        p, f = fast_simplification.simplify(vertices.astype(np.float32), faces.astype(np.int32), target_count=budget)
        used = np.unique(f)
        if len(used) == target:
            remap = -np.ones(len(p), dtype=np.int64)
            remap[used] = np.arange(len(used))
            return np.asarray(p, dtype=np.float64)[used], remap[f].astype(np.int64)
        budget += 2 * (target - len(used))
    raise RuntimeError(f"quadric decimation did not reach exactly {target} vertices (last {len(used)})")


def _snap(coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """A distinct fine vertex for every coarse vertex: nearest first, conflicts to the next free."""
    from scipy.spatial import cKDTree

    k = min(32, len(fine))
    dist, nn = cKDTree(fine).query(coarse, k=k)
    order = np.argsort(dist[:, 0], kind="stable")
    taken: set[int] = set()
    out = np.empty(len(coarse), dtype=np.int64)
    for i in order:
        for j in nn[i]:
            if int(j) not in taken:
                taken.add(int(j))
                out[i] = j
                break
        else:  # all k neighbours taken (never seen in practice): the nearest free vertex overall
            free = np.setdiff1d(np.arange(len(fine)), np.fromiter(taken, dtype=np.int64))
            j = free[np.argmin(np.linalg.norm(fine[free] - coarse[i], axis=1))]
            taken.add(int(j))
            out[i] = j
    return out


def _barycentric_up(fine: np.ndarray, coarse_v: np.ndarray, coarse_f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every fine vertex as barycentric weights on its closest coarse triangle (COMA's U)."""
    from scipy.spatial import cKDTree
    from trimesh.triangles import closest_point, points_to_barycentric

    tris = coarse_v[coarse_f]  # (F, 3, 3)
    k = min(24, len(coarse_f))
    _, cand = cKDTree(tris.mean(1)).query(fine, k=k)  # candidate triangles by centroid
    n = len(fine)
    best_d = np.full(n, np.inf)
    best_t = np.zeros(n, dtype=np.int64)
    best_p = np.zeros((n, 3))
    for c in range(k):
        t = cand[:, c]
        p = closest_point(tris[t], fine)
        d = np.linalg.norm(p - fine, axis=1)
        better = d < best_d
        best_d[better], best_t[better], best_p[better] = d[better], t[better], p[better]
    w = points_to_barycentric(tris[best_t], best_p)
    w = np.clip(w, 0.0, None)
    w /= w.sum(1, keepdims=True)
    return coarse_f[best_t].astype(np.int64), w.astype(np.float32)


def _hops(faces: np.ndarray, n: int) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    a = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    d = shortest_path(a, unweighted=True, directed=False)
    d[~np.isfinite(d)] = HOP_CAP
    return np.minimum(d, HOP_CAP).astype(np.uint8)


def derive_mesh_sampling(vertices: np.ndarray, faces: np.ndarray, levels: tuple[int, int] = LEVELS) -> MeshSampling:
    """Derive PointHMR's sampling for a mesh (template vertices (V, 3), faces (F, 3)); see the
    module docstring for the four steps. Deterministic for a given mesh."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    n1, n0 = (int(v) for v in levels)
    if not len(vertices) > n1 > n0 >= 4:
        raise ValueError(f"levels must decrease below the mesh's {len(vertices)} vertices; got {levels}")
    p1, f1 = _decimate(vertices, faces, n1)
    down1 = _snap(p1, vertices)
    v1 = vertices[down1]  # the mid mesh: decimated connectivity on selected original vertices
    p0, f0 = _decimate(v1, f1, n0)
    sel0 = _snap(p0, v1)  # into the mid level
    v0 = v1[sel0]
    up0_idx, up0_w = _barycentric_up(v1, v0, f0)
    up1_idx, up1_w = _barycentric_up(vertices, v1, f1)
    return MeshSampling(down1=down1, down0=down1[sel0], up0_idx=up0_idx, up0_w=up0_w, up1_idx=up1_idx,
                        up1_w=up1_w, hops0=_hops(f0, n0), faces0=f0)


def load_mesh_sampling(body_model: str) -> MeshSampling:
    """The shipped sampling of the free body model (``body_model="free"``). SMPL's is derived
    from the user's files (:func:`derive_mesh_sampling`) by ``hmrcli train``."""
    if body_model != "free":
        raise ValueError(f"no shipped mesh sampling for body model {body_model!r} (only 'free'); derive it with "
                         "derive_mesh_sampling(body.template(), body.faces)")
    return MeshSampling.load(assets.asset_path(FREE_MESH_SAMPLING_FILE))


