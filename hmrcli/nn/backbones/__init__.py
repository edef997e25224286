"""Image backbones: crop (B, 3, H, W), ImageNet-normalised -> pooled feature (B, D).

Four architectures, each in its own module and named so that the released
checkpoints load with ``load_state_dict(strict=True)`` once their backbone prefix
is stripped (none for the Multi-RoI ResNet-50, ``backbone.`` for the Multi-RoI
HRNet, ``encoder.`` for CLIFF):

========================  =====  ==============================================
name                      D      used by
========================  =====  ==============================================
``resnet50``              2048   Multi-RoI ``HMR_sim``, CLIFF ResNet-50
``hrnet_w48_pose``        720    Multi-RoI ``HMR_sim_hrnet``
``hrnet_w48_cls``         2048   CLIFF HRNet-W48
``resnet18``              512    small CPU-scale training runs (no released weights)
``hrnet_w32_pose``        480    PointHMR (its 1/4 and 1/32 branches; no released weights)
========================  =====  ==============================================

Every backbone exposes ``feature_dim``, ``forward_maps(x)`` (the map before pooling) and
``forward_pyramid(x)`` (a 1/4- and a 1/32-resolution map, ``pyramid_channels`` channels;
PointHMR's inputs). Randomly initialised; weights come from checkpoints.

HRNet-W32 is the project's own HRNet trunk at width 32 (the trunk the W48 checkpoints load
into). ``timm``'s ``hrnet_w32`` was considered: it brings torchvision (which pins one exact
torch build) and huggingface_hub as dependencies, its parameter names match none of the
released HMR checkpoints, and no pretrained weights can be downloaded here anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .hrnet_cls import ClsHRNet, hrnet_w48_cls
from .hrnet_pose import PoseHRNet, hrnet_w32_pose, hrnet_w48_pose
from .resnet import ResNet, resnet18, resnet50

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "ClsHRNet",
    "PoseHRNet",
    "ResNet",
    "create_backbone",
    "hrnet_w32_pose",
    "hrnet_w48_cls",
    "hrnet_w48_pose",
    "resnet18",
    "resnet50",
]


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: ``constructor()`` builds it; ``feature_dim`` is its
    pooled feature size."""

    name: str
    constructor: Callable[[], nn.Module]
    feature_dim: int
    description: str


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "resnet50", resnet50, 2048,
            "ResNet-50 (He et al. 2016), torchvision names; Multi-RoI HMR_sim and CLIFF res50",
        ),
        BackboneSpec(
            "hrnet_w48_pose", hrnet_w48_pose, 720,
            "pose-HRNet-W48, branches strided-conv'd to 1/32 and concatenated; Multi-RoI HMR_sim_hrnet",
        ),
        BackboneSpec(
            "hrnet_w48_cls", hrnet_w48_cls, 2048,
            "classification HRNet-W48 (incre/downsamp/final head); CLIFF hr48",
        ),
        BackboneSpec(
            "hrnet_w32_pose", hrnet_w32_pose, 480,
            "pose-HRNet-W32 (1/4 and 1/32 branches for PointHMR; no released weights)",
        ),
        BackboneSpec(
            "resnet18", resnet18, 512,
            "ResNet-18, torchvision names; small backbone for CPU-scale training (no released weights)",
        ),
    )
}


def create_backbone(name: str) -> nn.Module:
    """Build the registered backbone ``name`` (randomly initialised, train mode)."""
    try:
        spec = BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; available: {', '.join(sorted(BACKBONES))}") from None
    return spec.constructor()
