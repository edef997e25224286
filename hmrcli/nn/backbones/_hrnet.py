"""The HRNet trunk shared by the pose (Multi-RoI) and classification (CLIFF) variants.

HRNet (Sun et al., "Deep High-Resolution Representation Learning for Human Pose
Estimation", CVPR 2019; Wang et al., "Deep High-Resolution Representation
Learning for Visual Recognition", TPAMI 2020) keeps a 1/4-resolution branch
through the whole network and adds a lower-resolution branch (1/8, 1/16, 1/32)
at each stage; in every "high-resolution module" the branches run residual
blocks in parallel and then exchange information (each output branch sums all
input branches, resampled to its resolution).

Layout of the width-``w`` trunk (``w = 48`` for HRNet-W48), with the parameter
names of the original code:

* stem: ``conv1`` (3x3/2, 64) + ``bn1`` + ReLU, ``conv2`` (3x3/2, 64) + ``bn2`` + ReLU;
* ``layer1``: 4 bottlenecks, 64 -> 256 channels (1/4 resolution);
* ``transition1``: 256 -> branches ``[w, 2w]``; ``stage2``: 1 module;
* ``transition2``: adds branch ``4w``; ``stage3``: 4 modules;
* ``transition3``: adds branch ``8w``; ``stage4``: 3 modules, all four outputs kept;
* every branch of every module: 4 basic blocks.

Inside a module, ``fuse_layers[i][j]`` maps branch ``j`` to output branch ``i``:
identity for ``j == i`` (no parameters); 1x1 conv + BN + nearest upsampling for
``j > i``; ``i - j`` strided 3x3 conv + BN steps (ReLU between them, not after
the last) for ``j < i``. The sum is followed by a ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ._blocks import (
    BasicBlock,
    Bottleneck,
    batch_norm,
    conv1x1,
    conv3x3,
    make_res_layer,
)

__all__ = ["HighResolutionModule", "HRNetTrunk"]


class _UpsampleFuse(nn.Sequential):
    """``fuse_layers[i][j]`` for a lower-resolution source branch (``j > i``):
    1x1 conv + BN (children ``0``, ``1``), then nearest-neighbour upsampling.

    The original code uses ``nn.Upsample(scale_factor=2**(j-i))`` as child ``2``;
    upsampling to the target branch's size instead gives identical values when the
    input size is a multiple of 32 and still works when it is not.
    """

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:  # type: ignore[override]
        return F.interpolate(super().forward(x), size=tuple(size), mode="nearest")


def _downsample_fuse(in_ch: int, out_ch: int, steps: int) -> nn.Sequential:
    """``fuse_layers[i][j]`` for a higher-resolution source (``steps = i - j``)."""
    layers: list[nn.Module] = []
    for k in range(steps):
        last = k == steps - 1
        c = out_ch if last else in_ch
        step: list[nn.Module] = [conv3x3(in_ch, c, stride=2), batch_norm(c)]
        if not last:
            step.append(nn.ReLU(inplace=True))
        layers.append(nn.Sequential(*step))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel residual branches followed by the all-to-all multi-resolution fusion.

    ``forward(list of B branch maps) -> list of B maps`` (or only the highest-
    resolution one when ``multi_scale_output`` is false).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: Sequence[int],
        num_blocks: Sequence[int],
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock,
        multi_scale_output: bool = True,
    ) -> None:
        super().__init__()
        n = len(channels)
        if not len(in_channels) == len(num_blocks) == n:
            raise ValueError("in_channels, channels and num_blocks need one entry per branch")
        self.num_branches = n
        self.branches = nn.ModuleList(
            make_res_layer(block, in_channels[i], channels[i], num_blocks[i]) for i in range(n)
        )
        out = [c * block.expansion for c in channels]
        self.out_channels = out if multi_scale_output else out[:1]
        self.fuse_layers: nn.ModuleList | None = None
        if n > 1:
            rows = []
            for i in range(n if multi_scale_output else 1):
                row: list[nn.Module] = []
                for j in range(n):
                    if j > i:
                        row.append(_UpsampleFuse(conv1x1(out[j], out[i]), batch_norm(out[i])))
                    elif j == i:
                        row.append(nn.Identity())
                    else:
                        row.append(_downsample_fuse(out[j], out[i], i - j))
                rows.append(nn.ModuleList(row))
            self.fuse_layers = nn.ModuleList(rows)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        ys = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if self.fuse_layers is None:
            return ys
        fused = []
        for i, row in enumerate(self.fuse_layers):
            size = ys[i].shape[-2:]
            acc: torch.Tensor | None = None
            for j, layer in enumerate(row):
                t = layer(ys[j], size) if isinstance(layer, _UpsampleFuse) else layer(ys[j])
                acc = t if acc is None else acc + t
            fused.append(self.relu(acc))
        return fused


def _make_transition(prev: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """``transitionK``: adapt existing branches whose width changes (3x3 conv + BN
    + ReLU; identity otherwise) and create each new branch from the lowest-
    resolution previous one with strided 3x3 conv + BN + ReLU steps."""
    layers: list[nn.Module] = []
    for i, c in enumerate(cur):
        if i < len(prev):
            if prev[i] != c:
                layers.append(nn.Sequential(conv3x3(prev[i], c), batch_norm(c), nn.ReLU(inplace=True)))
            else:
                layers.append(nn.Identity())
        else:
            steps = []
            for k in range(i + 1 - len(prev)):
                c_out = c if k == i - len(prev) else prev[-1]
                steps.append(
                    nn.Sequential(conv3x3(prev[-1], c_out, stride=2), batch_norm(c_out), nn.ReLU(inplace=True))
                )
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


def _apply_transition(transition: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t(ys[i] if i < len(ys) else ys[-1]) for i, t in enumerate(transition)]


class HRNetTrunk(nn.Module):
    """Stem, ``layer1``, ``transition1..3`` and ``stage2..4`` of a width-``width`` HRNet.

    ``forward_branches(x) -> [1/4, 1/8, 1/16, 1/32 maps]`` with ``width * (1, 2, 4, 8)``
    channels. ``num_modules`` / ``num_blocks`` default to the standard W18..W64
    configuration (1/4/3 modules, 4 blocks per branch); smaller values are only
    meant for fast tests. Subclasses add a head and call ``init_weights``.
    """

    def __init__(self, width: int = 48, num_modules: Sequence[int] = (1, 4, 3), num_blocks: int = 4) -> None:
        super().__init__()
        self.width = width
        self.conv1 = conv3x3(3, 64, stride=2)
        self.bn1 = batch_norm(64)
        self.conv2 = conv3x3(64, 64, stride=2)
        self.bn2 = batch_norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_res_layer(Bottleneck, 64, 64, 4)

        prev = [64 * Bottleneck.expansion]
        for stage, n_modules in zip((2, 3, 4), num_modules, strict=True):
            cur = [width * 2**b for b in range(stage)]
            self.add_module(f"transition{stage - 1}", _make_transition(prev, cur))
            modules = [
                HighResolutionModule(cur, cur, [num_blocks] * stage, BasicBlock, multi_scale_output=True)
                for _ in range(n_modules)
            ]
            self.add_module(f"stage{stage}", nn.Sequential(*modules))
            prev = cur
        self.branch_channels: list[int] = prev

    def forward_branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        ys = self.stage2(_apply_transition(self.transition1, ys))
        ys = self.stage3(_apply_transition(self.transition2, ys))
        ys = self.stage4(_apply_transition(self.transition3, ys))
        return ys

    @property
    def pyramid_channels(self) -> tuple[int, int]:
        """Channels of :meth:`forward_pyramid`'s (1/4, 1/32) maps: ``(w, 8 w)``."""
        return (self.branch_channels[0], self.branch_channels[-1])

    def forward_pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (the 1/4-resolution branch, the 1/32 branch) of stage 4: the "top"
        and "bottom" paths PointHMR's decoders read (its supplementary, Fig. 1)."""
        ys = self.forward_branches(x)
        return ys[0], ys[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # overridden by the heads
        return self.forward_branches(x)
