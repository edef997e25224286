"""ResNet feature extractors (pooled feature, no classifier): ResNet-50 (bottleneck blocks,
2048-d; the published checkpoints' backbone) and ResNet-18 (basic blocks, 512-d; a small
backbone for CPU-scale training runs and tests, with no released Multi-RoI/CLIFF weights)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._blocks import (
    BasicBlock,
    Bottleneck,
    batch_norm,
    global_avg_pool,
    init_weights,
    make_res_layer,
)

__all__ = ["ResNet", "resnet50", "resnet18"]


class ResNet(nn.Module):
    """ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) without
    its ImageNet classifier, with bottleneck blocks (ResNet-50) or basic blocks (ResNet-18).

    Stem ``conv1`` (7x7, stride 2) + ``bn1`` + ReLU + 3x3/2 max-pool, then
    ``layer1``..``layer4`` (64/128/256/512 planes, x4 expansion for bottlenecks, strides
    1/2/2/2), then a global average pool: ``forward(x (B,3,H,W)) -> (B, feature_dim)``
    (2048 for ResNet-50, 512 for ResNet-18). Any input
    size works (224x224 gives a 7x7 map, 256x192 an 8x6 map; the authors'
    ``AvgPool2d`` of exactly that size equals the global mean used here).

    Parameter names are torchvision's (``fc`` left out), which are also those of
    HMR/SPIN, CLIFF's ResNet-50 release (``res50-PA45.7_MJE72.0_MVE85.3_3dpw.pt``,
    backbone under ``encoder.``) and the Multi-RoI authors' ``HMR_sim`` (backbone
    unprefixed). ImageNet torchvision weights load after dropping ``fc.*``.
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), block: type[nn.Module] = Bottleneck) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = batch_norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        in_ch = 64
        for idx, (planes, n) in enumerate(zip(widths, layers, strict=True)):
            stride = 1 if idx == 0 else 2
            self.add_module(f"layer{idx + 1}", make_res_layer(block, in_ch, planes, n, stride))
            in_ch = planes * block.expansion
        self.feature_dim = in_ch
        init_weights(self)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> last feature map (B, feature_dim, ceil(H/32), ceil(W/32))."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    @property
    def pyramid_channels(self) -> tuple[int, int]:
        """Channels of :meth:`forward_pyramid`'s (1/4, 1/32) maps."""
        return (self.layer1[-1].expansion * 64, self.feature_dim)

    def forward_pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (``layer1`` map at 1/4 resolution, ``layer4`` map at 1/32): the
        fine and coarse maps PointHMR's decoders read (:mod:`hmrcli.nn.pointhmr`)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        fine = self.layer1(x)
        return fine, self.layer4(self.layer3(self.layer2(fine)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, feature_dim) pooled features."""
        return global_avg_pool(self.forward_maps(x))


def resnet50() -> ResNet:
    """ResNet-50 (3, 4, 6, 3 bottlenecks): 2048-d feature."""
    return ResNet((3, 4, 6, 3))


def resnet18() -> ResNet:
    """ResNet-18 (2, 2, 2, 2 basic blocks): 512-d feature."""
    return ResNet((2, 2, 2, 2), BasicBlock)
