"""ResNet-18 feature extractor (pooled 512-d feature, no classifier).

A small backbone for CPU-scale training runs and tests (``hmrcli train`` with
``model.backbone = "resnet18"``). No published Multi-RoI or CLIFF checkpoint uses
it; it is randomly initialised (torchvision's ImageNet ResNet-18 weights load
after dropping ``fc.*``, should one want them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._blocks import (
    BasicBlock,
    batch_norm,
    global_avg_pool,
    init_weights,
    make_res_layer,
)

__all__ = ["BasicResNet", "resnet18"]


class BasicResNet(nn.Module):
    """ResNet with basic (two 3x3 convolution) blocks (He et al., CVPR 2016), without
    its ImageNet classifier.

    Stem ``conv1`` (7x7, stride 2) + ``bn1`` + ReLU + 3x3/2 max-pool, then
    ``layer1``..``layer4`` (64/128/256/512 channels, strides 1/2/2/2), then a
    global average pool: ``forward(x (B,3,H,W)) -> (B, 512)``. Any input size of at
    least 32x32 works (64x48 crops give a 2x2 map). Parameter names are torchvision's.
    """

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = batch_norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = 64
        for idx, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            self.add_module(f"layer{idx + 1}", make_res_layer(BasicBlock, in_ch, planes, n, 1 if idx == 0 else 2))
            in_ch = planes * BasicBlock.expansion
        self.feature_dim = in_ch
        init_weights(self)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> last feature map (B, 512, ceil(H/32), ceil(W/32))."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 512) pooled features."""
        return global_avg_pool(self.forward_maps(x))


def resnet18() -> BasicResNet:
    """ResNet-18 (2, 2, 2, 2 basic blocks): 512-d feature."""
    return BasicResNet((2, 2, 2, 2))
