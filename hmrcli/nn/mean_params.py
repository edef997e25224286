"""Regressor start values (SPIN's ``smpl_mean_params.npz`` layout).

``load_mean_params(None)`` gives hmrcli's shipped values (identity pose in 6D, zero shape,
cam [0.9, 0, 0]; see ``models/mean_params/hmrcli_mean_params.json``); a path loads the
user's file (e.g. SPIN's ``smpl_mean_params.npz``), read without pickle.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from hmrcli import assets

__all__ = ["MEAN_PARAMS_FILE", "load_mean_params"]

MEAN_PARAMS_FILE = "mean_params/hmrcli_mean_params.npz"
_SIZES = {"pose": 144, "shape": 10, "cam": 3}


def load_mean_params(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    p = Path(path) if path is not None else assets.asset_path(MEAN_PARAMS_FILE)
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: np.asarray(z[k], dtype=np.float32).reshape(-1) for k in _SIZES if k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: cannot read mean parameters ({e})") from e
    for k, n in _SIZES.items():
        if k not in data:
            raise ValueError(f"{p}: mean-parameter file lacks {k!r} (expected keys pose, shape, cam)")
        if data[k].size != n:
            raise ValueError(f"{p}: {k!r} has {data[k].size} values, expected {n}")
    return {k: torch.from_numpy(v) for k, v in data.items()}
