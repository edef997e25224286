"""The Multi-RoI HMR regressor (and CLIFF, its single-RoI baseline).

Follows the authors' code (``HMR_sim`` / ``HMR_sim_hrnet``) as stated in
``docs/method.md`` §5, so their checkpoints load:

* one shared backbone over the M crops of a person -> features ``h_m`` (D);
* relative box encoding ``PE(bbox_info_m - bbox_info_n)``, NeRF style, L = 32;
* fusion: for query RoI m and every key RoI n, ``fuse_fc(concat(h_n, PE(delta_mn)))``
  (256), the M results flattened -> ``attention`` (Linear, Tanh, Linear, Tanh,
  Linear, Tanh) -> softmax over n -> ``u_m = sum_n w_mn h_n``;
* HMR/CLIFF iterative regressor (3 iterations) on
  ``concat(u_m, bbox_info of all M RoIs, pose 6D (144), betas (10), cam (3))``,
  residual heads ``decpose``/``decshape``/``deccam`` from mean-parameter buffers
  ``init_pose``/``init_shape``/``init_cam``;
* every RoI row is regressed (per-RoI pose, shape, local camera).
  ``aggregation="code"`` (default, what the checkpoints were evaluated with) takes
  RoI 0's pose/shape as the person's; ``aggregation="paper"`` decodes one extra
  mesh from the mean fused feature (the papers' description);
* contrastive projection head (training only): ``h' = h * sigmoid(relu(h))``,
  ``proj_head`` = Linear, BN, ReLU, Linear (no bias), BN.

Native parameter names: the backbone lives under ``backbone.``; the head uses the
authors' names. :mod:`hmrcli.nn.checkpoints` maps the authors' and CLIFF's key
layouts onto these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hmrcli.geometry.rotations import rot6d_to_rotmat

__all__ = [
    "run_backbone",
    "NUM_POSE_6D",
    "NUM_BETAS",
    "PositionalEncoding",
    "MultiRoIHMR",
    "CLIFFRegressor",
    "RegressorOutput",
]

NUM_JOINTS = 24
NUM_POSE_6D = NUM_JOINTS * 6
NUM_BETAS = 10
NUM_CAM = 3
BBOX_INFO_DIM = 3


@dataclass
class RegressorOutput:
    """Per-RoI outputs of a regressor (B persons, M RoIs).

    rotmats: (B, M, 24, 3, 3) SMPL-layout joint rotations (joint 0 = global
    orientation, in the camera frame); betas: (B, M, 10); cams: (B, M, 3) local
    weak-perspective cameras ``(s, tx, ty)`` of each RoI; pose6d: (B, M, 144).
    ``person_*``: the person's single estimate per the aggregation (RoI 0 for
    "code", the mean-feature decode for "paper"). ``proj``: (B, M, D) projection
    head outputs (only when requested, for the contrastive loss). ``extras``: what an
    architecture adds for its own training losses or views (ImpHMR: ``azimuth``,
    ``silhouette``; PointHMR: ``heatmaps``, ``vertices0/1``, ``vertices``, ``joints``; see
    :mod:`hmrcli.nn.imphmr`, :mod:`hmrcli.nn.pointhmr`); None for Multi-RoI and CLIFF.
    """

    rotmats: torch.Tensor
    betas: torch.Tensor
    cams: torch.Tensor
    pose6d: torch.Tensor
    person_rotmats: torch.Tensor
    person_betas: torch.Tensor
    person_cam: torch.Tensor
    proj: torch.Tensor | None = None
    features: torch.Tensor | None = None
    extras: dict[str, Any] | None = None


class PositionalEncoding(nn.Module):
    """NeRF-style encoding: ``[x, sin(f_0 x), cos(f_0 x), ..., sin(f_{L-1} x), cos(f_{L-1} x)]``
    with ``f_k = pi * 2^k``; cos is computed as ``sin(f x + pi/2)`` (as the authors' code,
    so float32 results reproduce theirs). Buffers ``_freqs``/``_phases`` have shape (1, 2L, 1).
    """

    def __init__(self, num_freqs: int = 32, in_dim: int = BBOX_INFO_DIM) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        self.in_dim = in_dim
        freqs = (math.pi * 2.0 ** torch.arange(num_freqs, dtype=torch.float64)).repeat_interleave(2)
        phases = torch.tensor([0.0, math.pi / 2]).repeat(num_freqs)
        self.register_buffer("_freqs", freqs.float().view(1, -1, 1))
        self.register_buffer("_phases", phases.float().view(1, -1, 1))

    @property
    def out_dim(self) -> int:
        return self.in_dim * (1 + 2 * self.num_freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, 1, self.in_dim)
        enc = torch.sin(x2 * self._freqs + self._phases)  # (N, 2L, in_dim)
        return torch.cat([x2.reshape(-1, self.in_dim), enc.reshape(x2.shape[0], -1)], dim=-1).reshape(
            *lead, self.out_dim
        )


def run_backbone(backbone: nn.Module, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``backbone(x)`` for crops (K, 3, H, W), over at most ``chunk`` crops at a time (None or
    0: all at once). In eval mode every crop's feature depends on that crop alone, so chunking
    changes nothing but the speed (float rounding aside: convolution kernels may be chosen per
    batch size): on the CPU the backbone over many crops at once costs more per crop than
    over a few (cache-sized activations; see :mod:`hmrcli.engine.regress`). In training mode
    BatchNorm normalises over the batch, so ``chunk`` is ignored there."""
    k = x.shape[0]
    if not chunk or chunk >= k or backbone.training:
        return backbone(x)
    return torch.cat([backbone(x[i:i + chunk]) for i in range(0, k, chunk)])


def _iterate(
    model: nn.Module, x: torch.Tensor, n_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``n_iter`` HMR iterations; ``x`` (N, C) is the conditioning input."""
    n = x.shape[0]
    pose = model.init_pose.expand(n, -1)
    shape = model.init_shape.expand(n, -1)
    cam = model.init_cam.expand(n, -1)
    for _ in range(n_iter):
        xc = torch.cat([x, pose, shape, cam], dim=1)
        xc = model.drop2(model.fc2(model.drop1(model.fc1(xc))))
        pose = model.decpose(xc) + pose
        shape = model.decshape(xc) + shape
        cam = model.deccam(xc) + cam
    return pose, shape, cam


def _head_init(model: nn.Module, in_dim: int, hidden1: int, mean_params: dict[str, torch.Tensor] | None) -> None:
    model.fc1 = nn.Linear(in_dim + NUM_POSE_6D + NUM_BETAS + NUM_CAM, hidden1)
    model.drop1 = nn.Dropout()
    model.fc2 = nn.Linear(hidden1, 1024)
    model.drop2 = nn.Dropout()
    model.decpose = nn.Linear(1024, NUM_POSE_6D)
    model.decshape = nn.Linear(1024, NUM_BETAS)
    model.deccam = nn.Linear(1024, NUM_CAM)
    for lin in (model.decpose, model.decshape, model.deccam):  # HMR/SPIN init
        nn.init.xavier_uniform_(lin.weight, gain=0.01)
    mp = mean_params or {}
    model.register_buffer("init_pose", _mean(mp, "pose", NUM_POSE_6D))
    model.register_buffer("init_shape", _mean(mp, "shape", NUM_BETAS))
    model.register_buffer("init_cam", _mean(mp, "cam", NUM_CAM))


def _mean(mp: dict[str, torch.Tensor], key: str, dim: int) -> torch.Tensor:
    if key in mp:
        v = torch.as_tensor(mp[key], dtype=torch.float32).reshape(1, -1)
        if v.shape[1] != dim:
            raise ValueError(f"mean parameter {key!r} has {v.shape[1]} values, expected {dim}")
        return v
    if key == "pose":  # identity rotations in the 6D layout (rows of [[1,0],[0,1],[0,0]])
        return torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]).repeat(NUM_JOINTS).reshape(1, -1)
    if key == "cam":
        return torch.tensor([[0.9, 0.0, 0.0]])
    return torch.zeros(1, dim)


def _decode(pose6d: torch.Tensor) -> torch.Tensor:
    lead = pose6d.shape[:-1]
    return rot6d_to_rotmat(pose6d.reshape(*lead, NUM_JOINTS, 6))


def add_fusion_layers(module: nn.Module, feature_dim: int, num_rois: int, hidden: int = 256) -> None:
    """Give ``module`` the RoI-aware fusion's layers under the names of the authors' checkpoints
    (``pos_enc``, ``fuse_fc``, ``attention``), for :meth:`MultiRoIHMR.fusion_weights`: the
    relative positional encoding of the bbox_info differences, the key projection and the
    attention MLP over the M keys (module docstring)."""
    module.pos_enc = PositionalEncoding(32)
    module.fuse_fc = nn.Linear(feature_dim + module.pos_enc.out_dim, hidden)
    module.attention = nn.Sequential(
        nn.Linear(num_rois * hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, num_rois), nn.Tanh(),
    )


def contrastive_projection(module: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """The contrastive loss's embeddings (B, M, P) of backbone features (B, M, D): the gated
    features ``h * sigmoid(relu(h))`` through ``module.proj_head``. ValueError when the module
    was built without that head."""
    if not hasattr(module, "proj_head"):
        raise ValueError(f"this {type(module).__name__} model has no contrastive projection head "
                         "(M = 1, or built without it)")
    b, m = feats.shape[:2]
    gated = feats * torch.sigmoid(torch.relu(feats))
    return module.proj_head(gated.reshape(b * m, -1)).reshape(b, m, -1)


class MultiRoIHMR(nn.Module):
    """Multi-RoI HMR: ``forward(crops (B,M,3,H,W), bbox_info (B,M,3)) -> RegressorOutput``."""

    def __init__(
        self,
        backbone: nn.Module,
        num_rois: int = 5,
        n_iter: int = 3,
        aggregation: str = "code",
        mean_params: dict[str, torch.Tensor] | None = None,
        with_proj_head: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= num_rois <= 5:
            raise ValueError(f"num_rois must be 1..5, got {num_rois}")
        if aggregation not in ("code", "paper"):
            raise ValueError(f"aggregation must be 'code' or 'paper', got {aggregation!r}")
        self.num_rois = num_rois
        self.n_iter = n_iter
        self.aggregation = aggregation
        self.backbone = backbone
        d = int(backbone.feature_dim)
        self.feature_dim = d
        add_fusion_layers(self, d, num_rois)
        _head_init(self, d + BBOX_INFO_DIM * num_rois, 2048, mean_params)
        if with_proj_head:
            self.proj_head = nn.Sequential(
                nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                nn.Linear(d, d, bias=False), nn.BatchNorm1d(d),
            )

    def fusion_weights(self, feats: torch.Tensor, bbox_info: torch.Tensor) -> torch.Tensor:
        """Attention weights ``w[b, m, n]`` of key RoI n for query RoI m (softmax over n).

        feats (B, M, D), bbox_info (B, M, 3); vectorised over m and n.
        """
        b, m, d = feats.shape
        delta = bbox_info[:, :, None, :] - bbox_info[:, None, :, :]  # delta[b,m,n] = info_m - info_n
        pe = self.pos_enc(delta)
        keys = feats[:, None, :, :].expand(b, m, m, d)
        fused = self.fuse_fc(torch.cat([keys, pe], dim=-1))  # (B, M, M, 256)
        logits = self.attention(fused.reshape(b, m, -1))  # (B, M, M)
        return torch.softmax(logits, dim=-1)

    def fuse(self, feats: torch.Tensor, bbox_info: torch.Tensor) -> torch.Tensor:
        """``u_m = sum_n w_mn h_n``: (B, M, D)."""
        return torch.einsum("bmn,bnd->bmd", self.fusion_weights(feats, bbox_info), feats)

    def encode(self, crops: torch.Tensor, backbone_chunk: int | None = None) -> torch.Tensor:
        """Backbone features (B, M, D) of crops (B, M, 3, H, W), ``backbone_chunk`` crops at a
        time (:func:`run_backbone`)."""
        b, m = crops.shape[:2]
        return run_backbone(self.backbone, crops.reshape(b * m, *crops.shape[2:]), backbone_chunk).reshape(b, m, -1)

    def forward(
        self,
        crops: torch.Tensor,
        bbox_info: torch.Tensor,
        return_proj: bool = False,
        backbone_chunk: int | None = None,
    ) -> RegressorOutput:
        """``backbone_chunk``: run the backbone over at most that many of the B*M crops at a
        time (:func:`run_backbone`; the same outputs, faster on the CPU)."""
        b, m = crops.shape[:2]
        if m != self.num_rois or bbox_info.shape != (b, m, BBOX_INFO_DIM):
            raise ValueError(
                f"expected crops (B,{self.num_rois},3,H,W) and bbox_info (B,{self.num_rois},3); "
                f"got {tuple(crops.shape)} and {tuple(bbox_info.shape)}"
            )
        feats = self.encode(crops, backbone_chunk)
        bbox_info = bbox_info.to(feats.dtype)
        fused = self.fuse(feats, bbox_info)  # (B, M, D)
        all_info = bbox_info.reshape(b, 1, m * BBOX_INFO_DIM)
        x = torch.cat([fused, all_info.expand(b, m, -1)], dim=-1).reshape(b * m, -1)
        pose, shape, cam = _iterate(self, x, self.n_iter)
        pose = pose.reshape(b, m, -1)
        shape = shape.reshape(b, m, -1)
        cam = cam.reshape(b, m, -1)
        rotmats = _decode(pose)
        if self.aggregation == "code":
            p_rot, p_betas = rotmats[:, 0], shape[:, 0]
        else:
            xm = torch.cat([fused.mean(1), all_info[:, 0]], dim=-1)
            pp, ps, _ = _iterate(self, xm, self.n_iter)
            p_rot, p_betas = _decode(pp), ps
        proj = contrastive_projection(self, feats) if return_proj else None
        return RegressorOutput(
            rotmats=rotmats, betas=shape, cams=cam, pose6d=pose,
            person_rotmats=p_rot, person_betas=p_betas, person_cam=cam[:, 0],
            proj=proj, features=feats,
        )


class CLIFFRegressor(nn.Module):
    """CLIFF (Li et al., ECCV 2022): one RoI, regressor input
    ``concat(feature, bbox_info (3), pose, shape, cam)``, ``fc1`` -> 1024. The paper's
    M = 1 baseline. Same forward signature as :class:`MultiRoIHMR` with M = 1."""

    num_rois = 1
    aggregation = "code"

    def __init__(self, backbone: nn.Module, n_iter: int = 3, mean_params: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.n_iter = n_iter
        self.backbone = backbone
        self.feature_dim = int(backbone.feature_dim)
        _head_init(self, self.feature_dim + BBOX_INFO_DIM, 1024, mean_params)

    def forward(self, crops: torch.Tensor, bbox_info: torch.Tensor, return_proj: bool = False,
                backbone_chunk: int | None = None) -> RegressorOutput:
        if crops.dim() != 5 or crops.shape[1] != 1 or bbox_info.shape != (crops.shape[0], 1, BBOX_INFO_DIM):
            raise ValueError(
                f"CLIFF takes one RoI: crops (B,1,3,H,W), bbox_info (B,1,3); got {tuple(crops.shape)}, "
                f"{tuple(bbox_info.shape)}"
            )
        if return_proj:
            raise ValueError("CLIFF has no contrastive projection head")
        feats = run_backbone(self.backbone, crops[:, 0], backbone_chunk)
        x = torch.cat([feats, bbox_info[:, 0].to(feats.dtype)], dim=-1)
        pose, shape, cam = _iterate(self, x, self.n_iter)
        rot = _decode(pose)
        return RegressorOutput(
            rotmats=rot[:, None], betas=shape[:, None], cams=cam[:, None], pose6d=pose[:, None],
            person_rotmats=rot, person_betas=shape, person_cam=cam, proj=None, features=feats[:, None],
        )
