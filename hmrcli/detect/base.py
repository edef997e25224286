"""The person-detector interface shared by every backend.

A backend turns RGB images into person boxes. Boxes are full-image pixels ``(x1, y1, x2,
y2)`` (OpenCV convention: x right, y down, pixel centres at integer coordinates), scores in
[0, 1] (or None when the backend has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Detection", "Detector", "DetectorUnavailable"]


class DetectorUnavailable(RuntimeError):
    """The backend cannot run here (package or weights missing); the message says how to fix it."""


@dataclass
class Detection:
    box_xyxy: np.ndarray  # (4,) float64 pixels
    score: float | None
    detector: str
    label: str = "person"

    def to_json(self) -> dict[str, Any]:
        return {"box_xyxy": [float(v) for v in self.box_xyxy], "score": None if self.score is None else float(self.score),
                "class": self.label, "detector": self.detector}


@runtime_checkable
class Detector(Protocol):
    """``detect`` takes a list of RGB uint8 images (H, W, 3) and returns, per image, its
    person detections sorted by decreasing score."""

    name: str
    #: True for backends that can only find one person per image (mediapipe's BlazePose).
    one_person_per_image: bool
    # Optional: ``needs_pixels = False`` on backends that read only the image size (boxes from a
    # file, whole-image): the pipeline may then hand them images decoded into GPU memory.

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]: ...
