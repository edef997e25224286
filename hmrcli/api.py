"""The documented Python entry points of hmrcli (the CLI calls these).

>>> import hmrcli
>>> net = hmrcli.load_regressor("cliff-res50", device="cuda")       # doctest: +SKIP
>>> out = net(crops, bbox_info)   # crops (B,M,3,H,W) normalised, bbox_info (B,M,3)  # doctest: +SKIP
>>> out.rotmats, out.betas, out.cams   # (B,M,24,3,3), (B,M,10), (B,M,3)            # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch
from torch import nn

from hmrcli.body import load_body_model
from hmrcli.nn.checkpoints import RegressorConfig, load_checkpoint
from hmrcli.nn.registry import resolve_checkpoint

__all__ = ["load_regressor", "load_body_model", "RegressorConfig"]


def load_regressor(
    path_or_name: str | os.PathLike,
    device: str | torch.device = "cpu",
    aggregation: str | None = None,
) -> nn.Module:
    """Load a regressor from a checkpoint file (native, authors' Multi-RoI or CLIFF layout)
    or a registry name (``models/registry.json``, looked up in the checkpoints folder).

    Returns the network in eval mode on ``device``; its :class:`RegressorConfig` is
    ``model.config``. ``forward(crops (B,M,3,H,W), bbox_info (B,M,3))`` returns a
    :class:`hmrcli.nn.multiroi.RegressorOutput`.
    """
    path = resolve_checkpoint(path_or_name)
    model, cfg = load_checkpoint(path, aggregation=aggregation)
    model.config = cfg
    return model.to(device).eval()
