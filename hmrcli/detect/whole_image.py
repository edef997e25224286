"""``whole-image``: every image is one person whose box is the whole image.

For pre-cropped person images (one person roughly filling each picture), and the
behaviour of ``hmrcli infer`` before detection existed. The box is the whole picture under the
pixel-centre convention: ``[-0.5, -0.5, W - 0.5, H - 0.5]``.
"""

from __future__ import annotations

import numpy as np

from hmrcli.detect.base import Detection

__all__ = ["WholeImageDetector"]


class WholeImageDetector:
    name = "whole-image"
    one_person_per_image = True
    needs_pixels = False  # only the image size: images may be tensors on a GPU (nvJPEG decoding)

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        out = []
        for img in images:
            h, w = (int(v) for v in (img.shape if hasattr(img, "shape") else np.asarray(img).shape)[:2])
            # pixel (0, 0) is the centre of the top-left pixel: the image spans -0.5 .. W - 0.5
            out.append([Detection(np.array([-0.5, -0.5, w - 0.5, h - 0.5]), None, self.name)])
        return out
