"""Reading weight files without running code: every reader uses ``torch.load(weights_only=True)``
(or safetensors) and refuses what cannot be read that way, with a message naming the file.

The regressor formats (native safetensors, the authors' Multi-RoI and CLIFF files) are read by
:mod:`hmrcli.nn.checkpoints`, which also builds the network; the person-detector weights
(MMDetection checkpoints) are read here, so that checking them needs no detector framework.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmrcli.nn.checkpoints import CheckpointError

try:  # numpy >= 2
    from numpy._core import multiarray as _ma  # type: ignore[attr-defined]
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _ma  # type: ignore[no-redef]

__all__ = ["read_mmdet_checkpoint", "CheckpointError"]


def _numpy_safe_globals() -> list[Any]:
    """numpy objects that OpenMMLab checkpoints' metadata may hold, under the names that
    pickles written with numpy 1.x (``numpy.core``) and 2.x (``numpy._core``) use."""
    out: list[Any] = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(_ma._reconstruct, f"{mod}._reconstruct"), (_ma.scalar, f"{mod}.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return out


def read_mmdet_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, meta)`` of an MMDetection checkpoint (``{'state_dict': ..., 'meta': ...}``
    or a bare state dict), read with ``weights_only=True``. CheckpointError when it cannot be
    read that way."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    torch_version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    try:
        # (object, "module.name") pairs need torch >= 2.6; before, only plain objects
        globs = [g if torch_version >= (2, 6) or not isinstance(g, tuple) else g[0] for g in _numpy_safe_globals()]
        with allow(globs) if allow else contextlib.nullcontext():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, refused pickle global, not a torch file
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True ({type(e).__name__}: {first}). "
            "If the file comes from a source you trust and holds extra pickled objects, keep only its "
            "weights: python -c \"import torch,sys; c=torch.load(sys.argv[1], weights_only=False); "
            "torch.save({'state_dict': c['state_dict']}, sys.argv[2])\" IN.pth OUT.pth"
        ) from e
    meta: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        meta = obj.get("meta") or {}
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not an MMDetection checkpoint (no state dict of tensors under 'state_dict')")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj, meta if isinstance(meta, dict) else {}
