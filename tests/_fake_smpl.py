"""Synthetic SMPL-layout models for tests (the real SMPL files cannot be shipped).

``make_fake_smpl`` builds a small but complete model with SMPL's 6890-vertex
layout, non-zero shape and pose correctives. ``write_chumpy_pickle`` writes it
the way the official files are written: a Python dict whose ``shapedirs`` and
``v_template`` are ``chumpy.ch.Ch`` objects and whose ``J_regressor`` is a
``scipy.sparse.csc_matrix`` -- without chumpy or scipy, by registering
look-alike classes under those module paths while pickling.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types

import numpy as np

from hmrcli.body import SMPL_PARENTS

# A rough SMPL T-pose skeleton (metres, +Y up, +X body's left).
TPOSE_JOINTS = np.array([
    [0.0, 0.0, 0.0], [0.06, -0.09, 0.0], [-0.06, -0.09, 0.0], [0.0, 0.11, -0.02],
    [0.1, -0.47, 0.0], [-0.1, -0.47, 0.0], [0.0, 0.25, 0.0], [0.09, -0.87, -0.04],
    [-0.09, -0.87, -0.04], [0.0, 0.31, 0.02], [0.12, -0.93, 0.08], [-0.12, -0.93, 0.08],
    [0.0, 0.52, -0.01], [0.08, 0.43, 0.0], [-0.08, 0.43, 0.0], [0.0, 0.6, 0.05],
    [0.19, 0.45, -0.01], [-0.19, 0.45, -0.01], [0.45, 0.43, -0.03], [-0.45, 0.43, -0.03],
    [0.7, 0.44, -0.03], [-0.7, 0.44, -0.03], [0.78, 0.43, -0.04], [-0.78, 0.43, -0.04],
])


def make_fake_smpl(seed: int = 0, num_vertices: int = 6890, num_betas: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    owner = np.arange(num_vertices) % 24
    v_template = TPOSE_JOINTS[owner] + rng.normal(scale=0.03, size=(num_vertices, 3))
    weights = np.zeros((num_vertices, 24))
    weights[np.arange(num_vertices), owner] = 0.7
    parent = np.array([max(p, 0) for p in SMPL_PARENTS])[owner]
    weights[np.arange(num_vertices), parent] += 0.3
    j_reg = np.zeros((24, num_vertices))
    for j in range(24):
        idx = np.nonzero(owner == j)[0]
        j_reg[j, idx] = 1.0 / len(idx)
    kintree = np.stack([np.array([4294967295] + list(SMPL_PARENTS[1:]), dtype=np.int64), np.arange(24)])
    return {
        "v_template": v_template,
        "shapedirs": rng.normal(scale=0.01, size=(num_vertices, 3, num_betas)),
        "posedirs": rng.normal(scale=0.002, size=(num_vertices, 3, 207)),
        "J_regressor": j_reg,
        "weights": weights,
        "kintree_table": kintree,
        "f": rng.integers(0, num_vertices, size=(2 * num_vertices, 3)).astype(np.uint32),
    }


@contextlib.contextmanager
def _lookalike_modules():
    """Register classes named like chumpy's and scipy's so pickle writes their paths."""
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")

    class Ch:  # pickled as chumpy.ch.Ch, state like chumpy's
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()
            self._itr = None

        def __reduce_ex__(self, proto):
            import copyreg

            return (copyreg._reconstructor, (Ch, object, None), dict(self.__dict__))

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = Ch.__name__ = "Ch"
    ch.Ch = Ch
    chumpy.ch = ch
    sparse = types.ModuleType("scipy.sparse.csc")

    class csc_matrix:  # noqa: N801 - scipy's name
        def __init__(self, dense):
            dense = np.asarray(dense)
            data, indices, indptr = [], [], [0]
            for c in range(dense.shape[1]):
                nz = np.nonzero(dense[:, c])[0]
                data.extend(dense[nz, c])
                indices.extend(nz)
                indptr.append(len(indices))
            self.data = np.asarray(data)
            self.indices = np.asarray(indices, dtype=np.int32)
            self.indptr = np.asarray(indptr, dtype=np.int32)
            self._shape = dense.shape
            self.format = "csc"
            self.maxprint = 50

        def __reduce_ex__(self, proto):
            import copyreg

            return (copyreg._reconstructor, (csc_matrix, object, None), dict(self.__dict__))

    csc_matrix.__module__ = "scipy.sparse.csc"
    csc_matrix.__qualname__ = csc_matrix.__name__ = "csc_matrix"
    sparse.csc_matrix = csc_matrix
    fakes = {"chumpy": chumpy, "chumpy.ch": ch, "scipy.sparse.csc": sparse}
    for parent in ("scipy", "scipy.sparse"):  # only when scipy itself is absent
        if parent not in sys.modules:
            fakes[parent] = types.ModuleType(parent)
    saved = {k: sys.modules.get(k) for k in fakes}
    sys.modules.update(fakes)
    try:
        yield Ch, csc_matrix
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
                if "." in k:  # the fake parent's attribute
                    parent, _, name = k.rpartition(".")
                    if parent in sys.modules and getattr(sys.modules[parent], name, None) is fakes[k]:
                        delattr(sys.modules[parent], name)
            else:
                sys.modules[k] = v


def write_chumpy_pickle(path, model: dict[str, np.ndarray]) -> None:
    with _lookalike_modules() as (Ch, csc_matrix):
        obj = dict(model)
        obj["shapedirs"] = Ch(model["shapedirs"])
        obj["v_template"] = Ch(model["v_template"])
        obj["J_regressor"] = csc_matrix(model["J_regressor"])
        obj["bs_type"] = "lrotmin"
        obj["vert_sym_idxs"] = np.arange(model["v_template"].shape[0])
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)


def reference_lbs(model: dict[str, np.ndarray], rotmats: np.ndarray, betas: np.ndarray):
    """Plain numpy linear blend skinning with SMPL's pose correctives, one body.

    Written independently of smplx to check how hmrcli drives it.
    """
    parents = SMPL_PARENTS
    nb = betas.shape[0]
    v_shaped = model["v_template"] + model["shapedirs"][:, :, :nb] @ betas
    joints = model["J_regressor"] @ v_shaped
    feat = (rotmats[1:] - np.eye(3)).reshape(-1)
    v_posed = v_shaped + model["posedirs"] @ feat
    g = np.zeros((24, 4, 4))
    for i in range(24):
        local = np.eye(4)
        local[:3, :3] = rotmats[i]
        local[:3, 3] = joints[i] - (joints[parents[i]] if parents[i] >= 0 else 0)
        g[i] = local if parents[i] < 0 else g[parents[i]] @ local
    posed_joints = g[:, :3, 3].copy()
    a = g.copy()
    a[:, :3, 3] -= np.einsum("jab,jb->ja", g[:, :3, :3], joints)
    t = np.einsum("vj,jab->vab", model["weights"], a)
    verts = np.einsum("vab,vb->va", t[:, :3, :3], v_posed) + t[:, :3, 3]
    return verts, posed_joints
