"""Residual blocks and layer helpers shared by the ResNet and HRNet backbones.

The attribute names (``conv1``/``bn1``/..., ``downsample.0``/``downsample.1``)
follow the convention of torchvision's ResNet, which the original HRNet code and
the HMR/SPIN/CLIFF/Multi-RoI code bases all reuse, so that their checkpoints
load without renaming.

All BatchNorm layers use PyTorch's defaults, which are also the values of the
original implementations: ``momentum=0.1`` (PyTorch convention, i.e. the running
statistics move 10 % towards each batch statistic) and ``eps=1e-5``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "BN_MOMENTUM",
    "BN_EPS",
    "batch_norm",
    "conv1x1",
    "conv3x3",
    "BasicBlock",
    "Bottleneck",
    "make_res_layer",
    "init_weights",
    "global_avg_pool",
]

BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm2d with the momentum/eps of the original ResNet/HRNet code."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, padding=0, bias=bias)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projected) shortcut (He et al. 2016).

    Used by the parallel branches of HRNet stages 2-4.
    """

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = batch_norm(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = batch_norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) residual block (He et al. 2016).

    The stride sits on the 3x3 convolution ("ResNet v1.5", as in torchvision and
    in the HMR/SPIN/CLIFF/Multi-RoI and HRNet code bases).
    """

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = batch_norm(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = batch_norm(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = batch_norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def make_res_layer(
    block: type[BasicBlock] | type[Bottleneck], in_ch: int, planes: int, num_blocks: int, stride: int = 1
) -> nn.Sequential:
    """``num_blocks`` residual blocks; the first one projects the shortcut
    (``downsample`` = 1x1 conv + BN) when the stride or the width changes."""
    out_ch = planes * block.expansion
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(conv1x1(in_ch, out_ch, stride), batch_norm(out_ch))
    blocks: list[nn.Module] = [block(in_ch, planes, stride, downsample)]
    blocks += [block(out_ch, planes) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


def init_weights(module: nn.Module) -> None:
    """Random initialisation for training from scratch or for tests:
    He-normal (fan-out) convolutions, zero conv biases, BN scale 1 / shift 0.
    Released checkpoints overwrite all of it."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): mean over the whole feature map (the authors'
    ``AvgPool2d`` over the full 7x7 / 8x6 map, or ``AdaptiveAvgPool2d(1)``)."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
