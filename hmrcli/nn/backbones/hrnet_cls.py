"""Classification HRNet-W48 (2048-d feature): CLIFF's HRNet backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._blocks import (
    Bottleneck,
    batch_norm,
    global_avg_pool,
    init_weights,
    make_res_layer,
)
from ._hrnet import HRNetTrunk

__all__ = ["ClsHRNet", "hrnet_w48_cls"]


class ClsHRNet(HRNetTrunk):
    """Image-classification HRNet (Wang et al., "Deep High-Resolution
    Representation Learning for Visual Recognition", TPAMI 2020; trunk from Sun
    et al., CVPR 2019) without its ImageNet ``classifier``.

    This is the backbone of CLIFF (Li et al., "CLIFF: Carrying Location
    Information in Full Frames into Human Pose and Shape Estimation", ECCV 2022),
    released as ``hr48-PA43.0_MJE69.0_MVE81.2_3dpw.pt`` with the backbone under
    ``encoder.`` (it is also the Multi-RoI code's ``HMR_hrnet_cliff`` encoder).
    The HRNet-W48 trunk's four stage-4 outputs go through the classification
    head: ``incre_modules[k]`` (one bottleneck, ``head_channels[k] * 4`` =
    128/256/512/1024 channels), a chain of ``downsamp_modules`` (3x3/2 conv with
    bias + BN + ReLU) that carries the running sum from 1/4 down to 1/32,
    ``final_layer`` (1x1 conv with bias, 1024 -> 2048, BN, ReLU), and a global
    average pool: ``forward(x (B,3,H,W)) -> (B, 2048)``.

    Parameter names equal CLIFF's keys with ``encoder.`` stripped.
    """

    def __init__(
        self,
        width: int = 48,
        head_channels: Sequence[int] = (32, 64, 128, 256),
        feature_dim: int = 2048,
        num_modules: Sequence[int] = (1, 4, 3),
        num_blocks: int = 4,
    ) -> None:
        super().__init__(width, num_modules, num_blocks)
        c = self.branch_channels
        if len(head_channels) != len(c):
            raise ValueError(f"need {len(c)} head_channels, got {len(head_channels)}")
        self.incre_modules = nn.ModuleList(
            make_res_layer(Bottleneck, c_in, h, 1) for c_in, h in zip(c, head_channels, strict=True)
        )
        out = [h * Bottleneck.expansion for h in head_channels]
        self.downsamp_modules = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(out[k], out[k + 1], kernel_size=3, stride=2, padding=1, bias=True),
                batch_norm(out[k + 1]),
                nn.ReLU(inplace=True),
            )
            for k in range(len(out) - 1)
        )
        self.final_layer = nn.Sequential(
            nn.Conv2d(out[-1], feature_dim, kernel_size=1, stride=1, padding=0, bias=True),
            batch_norm(feature_dim),
            nn.ReLU(inplace=True),
        )
        self.feature_dim = feature_dim
        init_weights(self)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 2048, H/32, W/32) head map before pooling."""
        ys = self.forward_branches(x)
        y = self.incre_modules[0](ys[0])
        for k, down in enumerate(self.downsamp_modules):
            y = self.incre_modules[k + 1](ys[k + 1]) + down(y)
        return self.final_layer(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, feature_dim) pooled features."""
        return global_avg_pool(self.forward_maps(x))


def hrnet_w48_cls() -> ClsHRNet:
    """CLIFF's classification HRNet-W48: 2048-d feature."""
    return ClsHRNet(width=48)
