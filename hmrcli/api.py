"""The documented Python entry points of hmrcli (the CLI calls these).

>>> import hmrcli
>>> net = hmrcli.load_regressor("cliff-res50", device="cuda")       # doctest: +SKIP
>>> out = net(crops, bbox_info)   # crops (B,M,3,H,W) normalised, bbox_info (B,M,3)  # doctest: +SKIP
>>> out.rotmats, out.betas, out.cams   # (B,M,24,3,3), (B,M,10), (B,M,3)            # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn

from hmrcli.body import load_body_model
from hmrcli.nn.checkpoints import RegressorConfig
from hmrcli.weights.catalogue import load_regressor

__all__ = ["load_regressor", "load_body_model", "estimate_people", "RegressorConfig"]


def estimate_people(
    image,
    boxes_xyxy,
    regressor: nn.Module,
    body=None,
    focal: float | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    batch_size: int = 16,
):
    """Image in, people out: RGB uint8 image (H, W, 3) and person boxes (N, 4) xyxy pixels ->
    a list of :class:`hmrcli.engine.regress.PersonEstimate` (pose, betas, local cameras,
    full-image camera ``cam_t`` and ``K``, posed vertices). ``body`` defaults to
    ``load_body_model("auto")``."""
    import numpy as np

    from hmrcli.engine.regress import PersonBox, RegressionEngine

    if body is None:
        body = load_body_model("auto")
    engine = RegressionEngine(regressor, body, device=device, precision=precision, batch_size=batch_size)
    persons = [PersonBox(np.asarray(b, dtype=np.float64)) for b in np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)]
    if not persons:
        return []
    return engine.run([(engine.prepare(np.asarray(image), persons, focal), persons)])[0]
