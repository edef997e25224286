"""The fixed Multi-RoI layout (paper section 3.2.1 / 3.5, docs/method.md §2).

From one person box ``B = (cx, cy, b)`` (pixels, see :mod:`.boxes`) the
method crops ``M <= 5`` regions, in this order::

    RoI 0: (cx,          cy,          b)          # the box itself
    RoI 1: (cx + 0.1 b,  cy,          1.50 b)
    RoI 2: (cx - 0.1 b,  cy,          1.25 b)
    RoI 3: (cx,          cy + 0.1 b,  0.80 b)
    RoI 4: (cx,          cy - 0.1 b,  0.65 b)

Offsets are fractions of the *original* ``b`` (offset i pairs with scale i).
The same "Fixed" layout is used in training and at test time; ``M < 5`` takes
the first ``M`` rows (the paper's RoI-count ablation).  The layout is the same
for the "rect" and "square" conventions (``b`` is the crop height, resp. side).
"""

from __future__ import annotations

import numpy as np
import torch

from ._array import Array, as_arrays, check_last_dim, constant_like

__all__ = ["MAX_ROIS", "ROI_OFFSETS", "ROI_SCALES", "make_rois", "roi_layout"]

#: Centre offsets of the RoIs, in units of the original box size ``b`` (x, y).
ROI_OFFSETS = ((0.0, 0.0), (0.1, 0.0), (-0.1, 0.0), (0.0, 0.1), (0.0, -0.1))
#: Size factors of the RoIs (multiply ``b``).
ROI_SCALES = (1.0, 1.5, 1.25, 0.8, 0.65)
#: Number of RoIs in the paper's layout.
MAX_ROIS = len(ROI_SCALES)


def _check_num_rois(num_rois: int) -> int:
    if isinstance(num_rois, bool) or not isinstance(num_rois, (int, np.integer)):
        raise TypeError(f"num_rois must be an int, got {type(num_rois).__name__}")
    if not 1 <= int(num_rois) <= MAX_ROIS:
        raise ValueError(f"num_rois must be in 1..{MAX_ROIS}, got {num_rois}")
    return int(num_rois)


def roi_layout(num_rois: int = MAX_ROIS) -> np.ndarray:
    """The first ``num_rois`` rows of the layout as a float64 (M, 3) array.

    Row ``m`` is ``(dx_m, dy_m, k_m)``: RoI ``m`` of box ``(cx, cy, b)`` is
    ``(cx + dx_m b, cy + dy_m b, k_m b)``.
    """
    m = _check_num_rois(num_rois)
    offsets = np.asarray(ROI_OFFSETS[:m], dtype=np.float64)
    scales = np.asarray(ROI_SCALES[:m], dtype=np.float64)
    return np.concatenate([offsets, scales[:, None]], axis=1)


def make_rois(boxes: Array, num_rois: int = MAX_ROIS) -> Array:
    """Expand person boxes into their Multi-RoI boxes.

    Args:
        boxes: (..., 3) person boxes ``(cx, cy, b)`` in pixels (numpy or torch).
        num_rois: ``M`` in 1..5; the first ``M`` RoIs of the layout are used.
    Returns:
        (..., M, 3) RoI boxes ``(cx_m, cy_m, b_m)``, same backend/device/dtype.
    Raises:
        ValueError: ``num_rois`` outside 1..5 or ``boxes`` not (..., 3).
    """
    layout = roi_layout(num_rois)
    (boxes,) = as_arrays(boxes)
    check_last_dim(boxes, 3, "boxes")
    lay = constant_like(layout, boxes)  # (M, 3)
    b = boxes[..., None, 2:3]  # (..., 1, 1)
    centre = boxes[..., None, :2] + lay[:, :2] * b  # (..., M, 2)
    size = lay[:, 2:3] * b  # (..., M, 1)
    if isinstance(centre, torch.Tensor):
        return torch.cat([centre, size], dim=-1)
    return np.concatenate([centre, size], axis=-1)
