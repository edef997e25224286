"""PointHMR (Kim et al., "Sampling is Matter: Point-guided 3D Human Mesh Reconstruction",
CVPR 2023) as a regressor of hmrcli, after its supplementary material (the main paper's text is
not among the sources: docs/method.md §11 says what that leaves open and what hmrcli chose).

``forward(crops (B,1,3,H,W), bbox_info (B,1,3)) -> RegressorOutput`` like the other
regressors (one RoI; ``bbox_info`` is accepted and not used: PointHMR does not condition on
the box). Shapes below for 224x224 crops, ``D`` = ``token_dim`` (512 in the paper),
``N0`` = 431 coarse vertices, ``Z`` = grid cells, ``K`` = 14 joints:

1. **backbone** HRNet-W32 (``hrnet_w32_pose``; any backbone with ``forward_pyramid``): the
   1/4 map ``X1`` (32, 56, 56) and the 1/32 map ``X2`` (256, 7, 7);
2. **decoders** (supplementary Table 1): heatmaps = 1x1 conv (C1 -> N0) + 2 ResBlocks;
   features = 1x1 conv (C1 -> D) + 2 ResBlocks; grid features = 1x1 conv (C2 -> D) + 1
   ResBlock (ResBlock = He et al.'s basic block);
3. **point-guided sampling**: vertex token ``n`` = the feature map averaged with the weights
   ``relu(H_n) / sum relu(H_n)`` of its heatmap (the heatmaps are trained towards Gaussians
   at the projected vertices, so the weights peak there) -> (N0, D), plus a learned
   per-vertex embedding; grid tokens (Z, D) plus a learned embedding; joint tokens: K learned
   vectors; camera token: one linear layer over the N0 vertex tokens -> (1, D);
4. **two transformer blocks** of two encoders each (D, 8 heads; then D/4, 4 heads; pre-norm,
   feed-forward 2x width), ``Linear(D, D/4)`` between the blocks and ``Linear(D/4, 3)`` after:
   vertex tokens -> coarse vertices (N0, 3), joint tokens -> joints (K, 3), camera token ->
   weak-perspective camera ``(s, tx, ty)`` (added to the mean camera); grid tokens are dropped;
5. **progressive attention masking**: in encoder e = 1..4 a vertex token attends to the vertex
   tokens at most 7/5/3/1 edges away on the coarse mesh (the supplementary's Table 3); every
   other pair of tokens attends freely;
6. **coarse to fine**: vertices 431 -> 1,732 -> full mesh through the up-sampling of
   :mod:`hmrcli.nn.mesh_sampling` (derived for the body model; model buffers).

Units: vertices and joints in metres, camera axes (x right, y down, z forward), relative to
the pelvis joint. **Mapping to the body model** (what the engine and ONNX export consume):
PointHMR is model-free, hmrcli's outputs are body-model parameters. A parameter head (SPIN's
iterative regressor, 3 iterations from the mean parameters) reads the regressed coarse
vertices, the joints and the camera token's final feature and outputs 6D pose and betas;
it is trained with the usual pose/shape/mesh/keypoint losses beside PointHMR's own. The
camera is the camera token's. The regressed vertices are in ``extras`` (``vertices0``,
``vertices1``, ``vertices``) for the losses and for anyone who wants the model-free mesh.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hmrcli.nn.backbones._blocks import BasicBlock, conv1x1
from hmrcli.nn.mesh_sampling import MeshSampling, upsample
from hmrcli.nn.multiroi import (
    BBOX_INFO_DIM,
    RegressorOutput,
    _decode,
    _head_init,
    _iterate,
)

__all__ = ["PointHMR", "NUM_JOINTS_TOKENS", "MASK_HOPS"]

NUM_JOINTS_TOKENS = 14  # LSP's 14 joints (SPIN24 order 0..13)
MASK_HOPS = (7, 5, 3, 1)  # progressive attention masking, encoders 1..4 (supplementary Table 3)


def _decoder(c_in: int, c_out: int, n_blocks: int) -> nn.Sequential:
    return nn.Sequential(conv1x1(c_in, c_out, bias=True), *[BasicBlock(c_out, c_out) for _ in range(n_blocks)])


class _Encoder(nn.Module):
    """Pre-norm transformer encoder layer with a boolean attention mask (True = blocked)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class PointHMR(nn.Module):
    """PointHMR (module docstring): ``forward(crops (B,1,3,H,W), bbox_info (B,1,3))``."""

    num_rois = 1
    aggregation = "code"

    def __init__(
        self,
        backbone: nn.Module,
        sampling: MeshSampling,
        n_iter: int = 3,
        mean_params: dict[str, torch.Tensor] | None = None,
        token_dim: int = 512,
        grid_hw: tuple[int, int] = (7, 7),
    ) -> None:
        super().__init__()
        self.n_iter = n_iter
        self.backbone = backbone
        c1, c2 = backbone.pyramid_channels
        d = int(token_dim)
        if d % 32:
            raise ValueError(f"token_dim must be a multiple of 32, got {d}")
        n1, n0 = sampling.levels
        self.token_dim = d
        self.num_coarse = n0
        self.grid_hw = tuple(grid_hw)
        self.heatmap_decoder = _decoder(c1, n0, 2)
        self.feature_decoder = _decoder(c1, d, 2)
        self.grid_decoder = _decoder(c2, d, 1)
        self.vertex_embed = nn.Parameter(torch.randn(n0, d) * 0.02)
        self.grid_embed = nn.Parameter(torch.randn(grid_hw[0] * grid_hw[1], d) * 0.02)
        self.joint_tokens = nn.Parameter(torch.randn(NUM_JOINTS_TOKENS, d) * 0.02)
        self.cam_token = nn.Linear(n0, 1)
        self.block1 = nn.ModuleList([_Encoder(d, 8), _Encoder(d, 8)])
        self.reduce1 = nn.Linear(d, d // 4)
        self.block2 = nn.ModuleList([_Encoder(d // 4, 4), _Encoder(d // 4, 4)])
        self.reduce2 = nn.Linear(d // 4, 3)
        # the mesh sampling (buffers: a checkpoint carries the sampling it was trained with)
        self.register_buffer("down0", torch.from_numpy(np.asarray(sampling.down0, np.int64)))
        self.register_buffer("down1", torch.from_numpy(np.asarray(sampling.down1, np.int64)))
        self.register_buffer("up0_idx", torch.from_numpy(np.asarray(sampling.up0_idx, np.int64)))
        self.register_buffer("up0_w", torch.from_numpy(np.asarray(sampling.up0_w, np.float32)))
        self.register_buffer("up1_idx", torch.from_numpy(np.asarray(sampling.up1_idx, np.int64)))
        self.register_buffer("up1_w", torch.from_numpy(np.asarray(sampling.up1_w, np.float32)))
        self.register_buffer("hops0", torch.from_numpy(np.asarray(sampling.hops0, np.uint8)))
        # the parameter head: coarse vertices + joints + camera-token feature -> SMPL-layout parameters
        _head_init(self, 3 * n0 + 3 * NUM_JOINTS_TOKENS + d // 4, 1024, mean_params)

    @property
    def num_vertices(self) -> int:
        return int(self.up1_idx.shape[0])

    def attention_masks(self, z: int) -> list[torch.Tensor]:
        """The boolean masks (True = blocked) of the 4 encoders for a sequence
        ``[camera (1), joints (K), vertices (N0), grid (z)]``."""
        n0, k = self.num_coarse, NUM_JOINTS_TOKENS
        length = 1 + k + n0 + z
        masks = []
        for thr in MASK_HOPS:
            m = torch.zeros(length, length, dtype=torch.bool, device=self.hops0.device)
            m[1 + k:1 + k + n0, 1 + k:1 + k + n0] = self.hops0.to(torch.int16) > thr
            masks.append(m)
        return masks

    def forward(self, crops: torch.Tensor, bbox_info: torch.Tensor, return_proj: bool = False,
                backbone_chunk: int | None = None) -> RegressorOutput:
        if crops.dim() != 5 or crops.shape[1] != 1 or bbox_info.shape != (crops.shape[0], 1, BBOX_INFO_DIM):
            raise ValueError(f"PointHMR takes one RoI: crops (B,1,3,H,W), bbox_info (B,1,3); got "
                             f"{tuple(crops.shape)}, {tuple(bbox_info.shape)}")
        if return_proj:
            raise ValueError("PointHMR has no contrastive projection head")
        b = crops.shape[0]
        x = crops[:, 0]
        if backbone_chunk and not self.backbone.training and backbone_chunk < b:
            parts = [self.backbone.forward_pyramid(x[i:i + backbone_chunk]) for i in range(0, b, backbone_chunk)]
            fine, coarse = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        else:
            fine, coarse = self.backbone.forward_pyramid(x)
        heat = self.heatmap_decoder(fine)  # (B, N0, h, w)
        feat = self.feature_decoder(fine)  # (B, D, h, w)
        grid = self.grid_decoder(coarse)
        grid = F.adaptive_avg_pool2d(grid, self.grid_hw) if grid.shape[-2:] != self.grid_hw else grid
        w = F.relu(heat).flatten(2)
        w = w / (w.sum(-1, keepdim=True) + 1e-6)
        vtok = torch.einsum("bnp,bdp->bnd", w, feat.flatten(2)) + self.vertex_embed
        gtok = grid.flatten(2).transpose(1, 2) + self.grid_embed
        jtok = self.joint_tokens.expand(b, -1, -1)
        ctok = self.cam_token(vtok.transpose(1, 2)).transpose(1, 2)  # (B, 1, D)
        tokens = torch.cat([ctok, jtok.to(vtok.dtype), vtok, gtok], 1)
        masks = self.attention_masks(gtok.shape[1])
        for enc, m in zip(self.block1, masks[:2], strict=True):
            tokens = enc(tokens, m)
        tokens = self.reduce1(tokens)
        for enc, m in zip(self.block2, masks[2:], strict=True):
            tokens = enc(tokens, m)
        k, n0 = NUM_JOINTS_TOKENS, self.num_coarse
        out3 = self.reduce2(tokens)
        cam = out3[:, 0] + self.init_cam
        joints = out3[:, 1:1 + k]
        v0 = out3[:, 1 + k:1 + k + n0]
        v1 = upsample(v0, self.up0_idx, self.up0_w)
        v = upsample(v1, self.up1_idx, self.up1_w)
        hx = torch.cat([v0.flatten(1), joints.flatten(1), tokens[:, 0]], 1)
        pose, shape, _ = _iterate(self, hx, self.n_iter)
        rot = _decode(pose)
        extras: dict[str, Any] = {"heatmaps": heat, "vertices0": v0, "vertices1": v1, "vertices": v, "joints": joints}
        return RegressorOutput(
            rotmats=rot[:, None], betas=shape[:, None], cams=cam[:, None], pose6d=pose[:, None],
            person_rotmats=rot, person_betas=shape, person_cam=cam, proj=None, features=tokens[:, :1],
            extras=extras)
