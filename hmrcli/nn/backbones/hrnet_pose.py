"""Pose-HRNet-W48 with strided-conv downsampling to 1/32: the Multi-RoI authors'
HRNet backbone (720-d feature)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._blocks import batch_norm, conv3x3, global_avg_pool, init_weights
from ._hrnet import HRNetTrunk

__all__ = ["PoseHRNet", "hrnet_w32_pose", "hrnet_w48_pose"]


def _strided_convs(channels: int, steps: int) -> nn.Sequential:
    """``steps`` x (3x3/2 conv, BN, ReLU) at constant width (Sequential indices
    0,1,2, 3,4,5, ...: conv weights at 0/3/6, BN at 1/4/7)."""
    layers: list[nn.Module] = []
    for _ in range(steps):
        layers += [conv3x3(channels, channels, stride=2), batch_norm(channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class PoseHRNet(HRNetTrunk):
    """Pose-estimation HRNet (Sun et al., CVPR 2019; Wang et al., TPAMI 2020)
    turned into a global feature extractor by strided-conv downsampling.

    This is the backbone of the Multi-RoI authors' ``HMR_sim_hrnet`` (CptDiaos/
    Multi-RoI, HRNet-W48 initialised from ``pose_hrnet_w48_256x192``, the same
    construction as PARE's HRNet with ``downsample=True, use_conv=True``): the
    four stage-4 outputs (1/4, 1/8, 1/16, 1/32 with ``w, 2w, 4w, 8w`` channels)
    are brought to 1/32 by ``downsample_stage_1`` (3 steps), ``downsample_stage_2``
    (2 steps) and ``downsample_stage_3`` (1 step) of 3x3/2 conv + BN + ReLU,
    concatenated with the 1/32 branch (``15 w`` = 720 channels for W48) and
    averaged over space: ``forward(x (B,3,H,W)) -> (B, 720)``.

    ``final_layer`` (1x1 conv, ``w -> num_joints`` heatmaps, 24 in the authors'
    config) exists in their checkpoints but is not used for the feature; it is
    kept so that ``load_state_dict(strict=True)`` accepts them.

    Parameter names equal the authors' keys with ``backbone.`` stripped.
    """

    def __init__(
        self,
        width: int = 48,
        num_joints: int = 24,
        num_modules: Sequence[int] = (1, 4, 3),
        num_blocks: int = 4,
    ) -> None:
        super().__init__(width, num_modules, num_blocks)
        c = self.branch_channels
        self.final_layer = nn.Conv2d(c[0], num_joints, kernel_size=1, stride=1, padding=0)
        self.downsample_stage_1 = _strided_convs(c[0], 3)
        self.downsample_stage_2 = _strided_convs(c[1], 2)
        self.downsample_stage_3 = _strided_convs(c[2], 1)
        self.feature_dim = sum(c)
        init_weights(self)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 15 w, H/32, W/32) concatenated 1/32 map."""
        ys = self.forward_branches(x)
        return torch.cat(
            [self.downsample_stage_1(ys[0]), self.downsample_stage_2(ys[1]), self.downsample_stage_3(ys[2]), ys[3]],
            dim=1,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, feature_dim) pooled features."""
        return global_avg_pool(self.forward_maps(x))


def hrnet_w48_pose() -> PoseHRNet:
    """The Multi-RoI authors' pose-HRNet-W48 backbone: 720-d feature."""
    return PoseHRNet(width=48)


def hrnet_w32_pose() -> PoseHRNet:
    """Pose-HRNet-W32 (480-d pooled feature): PointHMR's backbone (its supplementary §2.1),
    whose 1/4 branch (32 channels) and 1/32 branch (256 channels) feed PointHMR's decoders
    (:meth:`~hmrcli.nn.backbones._hrnet.HRNetTrunk.forward_pyramid`). Built by the same trunk as
    the W48 backbones (width 32); no pretrained weights ship (random initialisation)."""
    return PoseHRNet(width=32)
