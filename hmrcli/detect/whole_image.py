"""``whole-image``: every image is one person whose box is the whole image.

For pre-cropped person images (one person roughly filling each picture), and the
behaviour of ``hmrcli infer`` before detection existed.
"""

from __future__ import annotations

import numpy as np

from hmrcli.detect.base import Detection

__all__ = ["WholeImageDetector"]


class WholeImageDetector:
    name = "whole-image"
    one_person_per_image = True

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        out = []
        for img in images:
            h, w = np.asarray(img).shape[:2]
            out.append([Detection(np.array([0.0, 0.0, w - 1.0, h - 1.0]), None, self.name)])
        return out
