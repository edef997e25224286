"""Small helpers that let one function body serve numpy arrays and torch tensors.

Rules used throughout :mod:`hmrcli.geometry`:

* If any array argument is a :class:`torch.Tensor`, the computation runs in
  torch on that tensor's device and floating dtype; other arguments (python
  numbers, numpy arrays) are converted to match.
* Otherwise the computation runs in numpy.  Integer or python inputs become
  ``float64``; floating numpy inputs keep their dtype.

Only operations whose spelling is the same in numpy and torch are used by the
callers (indexing, arithmetic, ``xp.stack(seq, -1)``, ``xp.sqrt``,
``xp.maximum``...), so the namespace returned by :func:`namespace` is simply
the ``numpy`` or ``torch`` module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Array = Any  # numpy.ndarray | torch.Tensor (kept loose for docs/type hints)


def is_torch(*xs: Any) -> bool:
    """True if any argument is a torch tensor."""
    return any(isinstance(x, torch.Tensor) for x in xs)


def _first_float_tensor(xs: tuple[Any, ...]) -> torch.Tensor | None:
    first = None
    for x in xs:
        if isinstance(x, torch.Tensor):
            if x.is_floating_point():
                return x
            if first is None:
                first = x
    return first


def as_arrays(*xs: Any) -> tuple[Any, ...]:
    """Convert all arguments to one backend (torch if any input is a tensor).

    ``None`` passes through unchanged.  For torch, the reference tensor is the
    first floating tensor (else the first tensor, then ``float32`` is used
    with the default dtype); every other input is moved to its device/dtype.
    For numpy, floating arrays keep their dtype, everything else becomes
    ``float64``; when several floating numpy inputs differ, numpy's usual
    promotion applies during the arithmetic.
    """
    ref = _first_float_tensor(xs)
    if ref is not None:
        dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        out = []
        for x in xs:
            if x is None:
                out.append(None)
            elif isinstance(x, torch.Tensor):
                out.append(x.to(device=ref.device, dtype=dtype))
            else:
                out.append(torch.as_tensor(np.asarray(x, dtype=np.float64), device=ref.device, dtype=dtype))
        return tuple(out)
    out = []
    for x in xs:
        if x is None:
            out.append(None)
            continue
        a = np.asarray(x)
        if not np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float64)
        out.append(a)
    return tuple(out)


def namespace(x: Any):
    """Return the ``torch`` module for tensors, ``numpy`` otherwise."""
    return torch if isinstance(x, torch.Tensor) else np


def zeros_like(x: Any) -> Any:
    return torch.zeros_like(x) if isinstance(x, torch.Tensor) else np.zeros_like(x)


def ones_like(x: Any) -> Any:
    return torch.ones_like(x) if isinstance(x, torch.Tensor) else np.ones_like(x)


def broadcast(*xs: Any) -> tuple[Any, ...]:
    """Broadcast arrays of one backend against each other."""
    if is_torch(*xs):
        return tuple(torch.broadcast_tensors(*xs))
    return tuple(np.broadcast_arrays(*xs))


def constant_like(values: Any, like: Any) -> Any:
    """A constant array with the backend/device/dtype of ``like``."""
    if isinstance(like, torch.Tensor):
        return torch.as_tensor(np.asarray(values, dtype=np.float64), device=like.device, dtype=like.dtype)
    return np.asarray(values, dtype=like.dtype)


def check_last_dim(x: Any, n: int, name: str) -> None:
    if x.shape[-1:] != (n,):
        raise ValueError(f"{name} must have shape (..., {n}), got {tuple(x.shape)}")
