"""What every engine takes and returns, and the one interface the batch pipeline drives.

An engine turns the persons of an image into :class:`PersonEstimate` records in two calls:
``prepare`` does the per-image work while the image is in memory (on the pipeline's loader
thread: crops, or BlazePose landmarks), ``run`` the batched work over several prepared
images (on the calling thread: the network, or the fit) and returns, per image, one estimate
per person (None for a person that could not be reconstructed; the reason is in the
prepared item's ``problems``). Prepared items are typed (:class:`Prepared` and the engines'
subclasses). Engines: :class:`hmrcli.engine.regress.RegressionEngine`,
:class:`hmrcli.engine.fit.FitEngine`, :class:`hmrcli.engine.fit.RefinedEngine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hmrcli.body import BodyModel

__all__ = ["PersonBox", "PersonEstimate", "Prepared", "Engine", "finished_images"]


@dataclass
class PersonBox:
    """A person to reconstruct: its box (x1, y1, x2, y2) in full-image pixels."""

    xyxy: np.ndarray
    score: float | None = None
    source: str = "boxes"


@dataclass
class PersonEstimate:
    """One reconstructed person. Units: metres (3D), pixels (2D).

    rotmats (24,3,3): joint rotations, joint 0 = global orientation in the camera frame;
    betas (10,): the regressor's shape coefficients (space given by ``betas_space``);
    vertices_model (V,3): the body model's output with that pose (before the camera
    translation); cam_t (3,): full-image camera translation, X_cam = X_model + cam_t;
    K (3,3) intrinsics; rois (M,3) RoI boxes (cx, cy, b); cams_local (M,3) (s, tx, ty);
    bbox_info (M,3); joints_model (24,3); quality: the person's quality block
    (:mod:`hmrcli.engine.quality`; None when not assessed), written as the camera JSON's
    ``quality``.
    """

    box: PersonBox
    crop_box: np.ndarray
    rois: np.ndarray
    bbox_info: np.ndarray
    cams_local: np.ndarray
    rotmats: np.ndarray
    betas: np.ndarray
    betas_applied: bool
    cam_t: np.ndarray
    K: np.ndarray
    focal: float
    image_wh: tuple[int, int]
    vertices_model: np.ndarray
    joints_model: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] | None = None


@dataclass(kw_only=True)
class Prepared:
    """What an engine's ``prepare`` made of one image, for its ``run``. Every engine's has the
    image size ``image_wh`` (W, H pixels), the camera (``focal`` pixels, ``principal`` (cu,
    cv) pixels), ``problems`` (per person: why it cannot be reconstructed, "" when it can;
    recorded by the pipeline) and, for engines that use BlazePose, ``landmarks`` (per person,
    None where none were found). Engines add their own fields in a subclass
    (:class:`hmrcli.engine.regress.RegressPrepared`: the crops)."""

    image_wh: tuple[int, int]
    focal: float
    principal: tuple[float, float]
    problems: list[str] = field(default_factory=list)
    landmarks: list[Any] | None = None


@runtime_checkable
class Engine(Protocol):
    """The interface of an engine. ``prepare`` may be called from another thread than
    ``run``; ``prepare`` receives ``principal`` only when a principal point is known."""

    name: str
    body: BodyModel
    batch_size: int
    betas_applied: bool
    betas_space: str

    def describe(self) -> dict[str, Any]:
        """Settings recorded in the camera JSON and the manifest (``engine``, ``roi_convention``, ...)."""

    def prepare(self, image: np.ndarray, persons: list[PersonBox], focal: float | None = None,
                principal: tuple[float, float] | None = None) -> Prepared:
        """Per-image work on an RGB uint8 image; ``focal`` pixels (None: sqrt(W^2 + H^2))."""

    def run(self, prepared: list[tuple[Prepared, list[PersonBox]]], *, stop: Callable[[], bool] | None = None,
            on_persons: Callable[[int], None] | None = None) -> list[list[PersonEstimate | None]]:
        """Batched work over several prepared images: per image, per person, an estimate or
        None. Persons are worked on in batches of ``batch_size``; after each, ``on_persons(n)``
        is told how many were done, and when ``stop()`` is true the engine returns early: the
        list then holds only the images finished so far (a prefix of ``prepared``)."""


def finished_images(flat: Sequence[tuple[int, int]], done: int, total_images: int) -> int:
    """How many leading images are finished when the first ``done`` entries of ``flat`` (the
    (image, person) pairs an engine works on, in image order) are: every image before the
    image of the first pair not done yet (all of them when every pair is done)."""
    return flat[done][0] if done < len(flat) else total_images
