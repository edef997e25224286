"""A learned pose prior: Gaussian mixture over the 69-d axis-angle body pose (as in SMPLify).

The shipped model, ``models/pose_prior/cmu_gmm8.npz``, is an 8-component full-covariance
mixture fitted to CMU motion capture retargeted onto hmrcli's free SMPL-layout body
(``scripts/build_pose_prior.py``; provenance, licence and figures in
``models/pose_prior/README.md``). It models the *body pose* only -- the 23 joint rotations
after the global orientation (SMPL joints 1..23, SMPL order), as axis-angle in each joint's
local frame of the SMPL-layout T-pose rest pose (x: the body's left, y: up, z: forward),
flattened joint-major to 69 numbers: ``body_pose.reshape(B, 69)`` of a ``(B, 23, 3)`` array.
The same convention as :mod:`hmrcli.body.pose_limits` and ``FitResult.body_pose_aa``.

Energies, with ``d_k = x - mu_k`` and ``L_k`` the lower Cholesky factor of component k's
precision (``P_k = L_k L_k^T``):

* :meth:`GMMPosePrior.nll`: SMPLify's max-mixture approximation of the negative
  log-likelihood, ``min_k [0.5 |L_k^T d_k|^2 - log w_k + 0.5 log det Sigma_k] + 0.5 D log(2 pi)``,
  i.e. ``-log max_k w_k N(x; mu_k, Sigma_k)``;
* :meth:`GMMPosePrior.residuals`: ``r = L_k*^T d_k*`` for the component k* that attains that
  minimum, so ``0.5 |r|^2`` is its Mahalanobis term -- the form a Levenberg-Marquardt solver
  (sum of squared residuals) takes; the component's constant is left out.

Both take torch tensors on any device, float32 or float64, shaped ``(B, 69)``, ``(B, 23, 3)``,
``(69,)`` or ``(23, 3)`` (unbatched inputs give unbatched outputs, so a per-person residual
function can call them under ``torch.func.vmap``), and are differentiable, including with
``torch.func.jacfwd`` (no in-place operations, no data-dependent Python control flow; the
component is chosen with ``argmin`` + ``gather``, which is piecewise constant).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmrcli import assets

__all__ = ["DEFAULT_POSE_PRIOR_FILE", "GMMPosePrior"]

#: The shipped prior, relative to the models folder (:func:`hmrcli.assets.asset_path`).
DEFAULT_POSE_PRIOR_FILE = "pose_prior/cmu_gmm8.npz"


class GMMPosePrior:
    """Gaussian-mixture prior over the 69-d axis-angle body pose (see the module docstring).

    ``means (K, D)``, ``precisions_chol (K, D, D)`` (lower-triangular, precision = L @ L.T),
    ``weights (K,)``; ``covariances (K, D, D)`` optional (computed when not given).
    """

    def __init__(
        self,
        means: np.ndarray,
        precisions_chol: np.ndarray,
        weights: np.ndarray,
        covariances: np.ndarray | None = None,
        joint_names: tuple[str, ...] | None = None,
        metadata: dict[str, Any] | None = None,
        path: str | os.PathLike | None = None,
    ) -> None:
        means = np.asarray(means, dtype=np.float64)
        pchol = np.asarray(precisions_chol, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be (K, D); got {means.shape}")
        k, d = means.shape
        if pchol.shape != (k, d, d):
            raise ValueError(f"precisions_chol must be ({k}, {d}, {d}); got {pchol.shape}")
        if weights.shape != (k,):
            raise ValueError(f"weights must be ({k},); got {weights.shape}")
        if not np.all(weights > 0) or abs(weights.sum() - 1.0) > 1e-6:
            raise ValueError("weights must be positive and sum to 1")
        if not np.allclose(pchol, np.tril(pchol)):
            raise ValueError("precisions_chol must be lower-triangular")
        diag = np.diagonal(pchol, axis1=1, axis2=2)
        if not np.all(diag > 0):
            raise ValueError("precisions_chol must have a positive diagonal")
        self.means = means
        self.precisions_chol = pchol
        self.weights = weights
        if covariances is None:
            covariances = np.linalg.inv(pchol @ np.swapaxes(pchol, 1, 2))
        self.covariances = np.asarray(covariances, dtype=np.float64)
        self.joint_names = tuple(joint_names) if joint_names is not None else None
        self.metadata = dict(metadata or {})
        self.path = Path(path) if path is not None else None
        # -log w_k + 0.5 log det Sigma_k + 0.5 D log(2 pi)   (log det Sigma_k = -2 sum log diag L_k)
        self.component_constants = -np.log(weights) - np.log(diag).sum(1) + 0.5 * d * math.log(2 * math.pi)
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> GMMPosePrior:
        """Read a prior file (``np.load(allow_pickle=False)``); default: the shipped
        ``pose_prior/cmu_gmm8.npz`` found through :func:`hmrcli.assets.asset_path`."""
        p = assets.asset_path(DEFAULT_POSE_PRIOR_FILE) if path is None else Path(path)
        with np.load(p, allow_pickle=False) as z:
            files = set(z.files)
            missing = {"means", "precisions_chol", "weights"} - files
            if missing:
                raise ValueError(f"{p}: not a GMM pose prior (missing {', '.join(sorted(missing))})")
            meta = json.loads(str(z["metadata"].item())) if "metadata" in files else {}
            return cls(
                means=z["means"],
                precisions_chol=z["precisions_chol"],
                weights=z["weights"],
                covariances=z["covariances"] if "covariances" in files else None,
                joint_names=tuple(str(s) for s in z["joint_names"]) if "joint_names" in files else None,
                metadata=meta,
                path=p,
            )

    # ------------------------------------------------------------------ properties
    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path is not None else ""
        return f"GMMPosePrior(K={self.n_components}, D={self.dim}{where})"

    # ------------------------------------------------------------------ internals
    def _tensors(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = (
                torch.as_tensor(self.means, device=device, dtype=dtype),
                torch.as_tensor(self.precisions_chol, device=device, dtype=dtype),
                torch.as_tensor(self.component_constants, device=device, dtype=dtype),
            )
        return self._cache[key]

    def _flatten(self, body_pose: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(B, D) input and whether the caller's input was unbatched."""
        x = body_pose if isinstance(body_pose, torch.Tensor) else torch.as_tensor(np.asarray(body_pose, dtype=np.float64))
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        d = self.dim
        if x.dim() >= 2 and x.shape[-1] == 3 and x.shape[-2] * 3 == d:
            x = x.reshape(*x.shape[:-2], d)
        if x.shape[-1] != d or x.dim() not in (1, 2):
            raise ValueError(f"body pose must be (B, {d}), (B, {d // 3}, 3), ({d},) or ({d // 3}, 3); got {tuple(x.shape)}")
        unbatched = x.dim() == 1
        return (x.unsqueeze(0) if unbatched else x), unbatched

    def _terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y (B, K, D) = L_k^T (x - mu_k) and cost (B, K) = 0.5 |y|^2 + constant_k."""
        mu, lc, const = self._tensors(x.device, x.dtype)
        diff = x.unsqueeze(1) - mu.unsqueeze(0)                   # (B, K, D)
        y = torch.einsum("kdj,bkd->bkj", lc, diff)                 # (L_k^T d)_j = sum_d L_k[d, j] d_d
        cost = 0.5 * (y * y).sum(-1) + const.unsqueeze(0)
        return y, cost

    # ------------------------------------------------------------------ public
    def nll(self, body_pose: torch.Tensor) -> torch.Tensor:
        """Max-mixture negative log-likelihood, (B, 69) -> (B,) (unbatched -> scalar)."""
        x, unbatched = self._flatten(body_pose)
        _, cost = self._terms(x)
        out = cost.min(dim=1).values
        return out.squeeze(0) if unbatched else out

    def component(self, body_pose: torch.Tensor) -> torch.Tensor:
        """Index (B,) int64 of the component attaining the max-mixture minimum."""
        x, unbatched = self._flatten(body_pose)
        _, cost = self._terms(x)
        k = cost.argmin(dim=1)
        return k.squeeze(0) if unbatched else k

    def mahalanobis_sq(self, body_pose: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance (B, K) to every component."""
        x, unbatched = self._flatten(body_pose)
        y, _ = self._terms(x)
        out = (y * y).sum(-1)
        return out.squeeze(0) if unbatched else out

    def residuals(self, body_pose: torch.Tensor) -> torch.Tensor:
        """Residuals (B, 69) (unbatched -> (69,)) with 0.5 |r|^2 = the Mahalanobis term of the
        best component: r = L_k*^T (x - mu_k*)."""
        x, unbatched = self._flatten(body_pose)
        y, cost = self._terms(x)
        k = cost.argmin(dim=1)
        idx = k.view(-1, 1, 1).expand(-1, 1, y.shape[-1])
        r = torch.gather(y, 1, idx).squeeze(1)
        return r.squeeze(0) if unbatched else r
