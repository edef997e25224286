"""Person detection: backends behind one interface (:class:`hmrcli.detect.base.Detector`).

Backends (``--detector``), imported only when used:

* ``mmdet`` -- an MMDetection detector (needs mmdet + mmcv and a checkpoint); many people.
* ``movenet`` -- MoveNet MultiPose (Apache-2.0, converted to ONNX, shipped), offline: every
  person, up to 6 per pass (two input sizes merged). The offline default.
* ``mediapipe`` -- MediaPipe BlazePose (mediapipe 0.10.21), offline: every person whose head is
  in view (BlazePose's person detector on the image and on overlapping tiles, a landmark pass
  per candidate, duplicates merged); ``multi=False`` gives MediaPipe's one-person behaviour.
* ``boxes`` -- boxes read from a file (``hmrcli detect`` JSON lines or COCO annotations).
* ``whole-image`` -- the whole image is one person (pre-cropped person images).

``auto`` picks mmdet when it is installed with a checkpoint, else movenet (the offline default),
else mediapipe. Measured on the hand-counted sample photos: README, "Person detectors".

>>> from hmrcli.detect import create_detector, detect_sources     # doctest: +SKIP
>>> det = create_detector("auto", score_thr=0.5)                   # doctest: +SKIP
>>> for r in detect_sources(expand_inputs(["photos/"]), det):     # doctest: +SKIP
...     print(r.source.path, [d.box_xyxy for d in r.detections], r.error)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hmrcli.detect.base import Detection, Detector, DetectorUnavailable
from hmrcli.devices import resolve_device
from hmrcli.sources import ImageReadError, read_image

__all__ = [
    "Detection", "Detector", "DetectorUnavailable", "DETECTORS", "DetectedImage",
    "create_detector", "default_detector", "available_detectors", "detector_options",
    "detect_images", "detect_sources", "detection_summary", "DetectorSpec",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Backend:
    module: str
    cls: str
    description: str


#: name -> backend; ``auto`` prefers them in AUTO_ORDER (mmdet, then movenet, then mediapipe).
DETECTORS: dict[str, _Backend] = {
    "mmdet": _Backend("hmrcli.detect.mmdet_backend", "MMDetDetector",
                      "MMDetection person detector (mmdet + mmcv and a checkpoint); finds every person"),
    "movenet": _Backend("hmrcli.detect.movenet_backend", "MoveNetDetector",
                        "MoveNet MultiPose (ONNX, shipped in models/detect), offline: every person, up to 6 "
                        "per pass, at input sizes 256 and 512 merged"),
    "mediapipe": _Backend("hmrcli.detect.mediapipe_backend", "MediaPipeDetector",
                          "MediaPipe BlazePose, offline, no weights to fetch; finds every person whose head is "
                          "in view (tiled person detector + a landmark pass per person)"),
    "boxes": _Backend("hmrcli.detect.boxes_backend", "BoxesDetector",
                      "boxes read from a file: hmrcli detect JSON lines or COCO annotations"),
    "whole-image": _Backend("hmrcli.detect.whole_image", "WholeImageDetector",
                            "the whole image is one person (pre-cropped person images)"),
}
AUTO_ORDER = ("mmdet", "movenet", "mediapipe")


def _backend_class(name: str):
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}: use auto, {', '.join(DETECTORS)}")
    b = DETECTORS[name]
    try:
        mod = importlib.import_module(b.module)
    except ImportError as e:
        raise DetectorUnavailable(f"{name} backend cannot be imported ({type(e).__name__}: {e})") from e
    return getattr(mod, b.cls)


def detector_options(name: str) -> set[str]:
    """Keyword options the backend's constructor accepts (``score_thr``, ``device``, ...)."""
    if name == "auto":
        out: set[str] = set()
        for n in AUTO_ORDER:
            try:
                out |= detector_options(n)
            except DetectorUnavailable:
                pass
        return out
    sig = inspect.signature(_backend_class(name).__init__)
    return {p for p in sig.parameters if p != "self" and sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD}


def create_detector(name: str, **opts: Any) -> Detector:
    """A detector by name (``auto`` = :func:`default_detector`). Options the backend does
    not take, and options given as None, are left out (so one set of CLI options serves
    every backend). Raises DetectorUnavailable (package or weights missing) or ValueError."""
    if name == "auto":
        return default_detector(**opts)
    cls = _backend_class(name)
    accepted = detector_options(name)
    use = {k: v for k, v in opts.items() if v is not None and k in accepted}
    ignored = sorted(k for k, v in opts.items() if v is not None and k not in accepted)
    if ignored:
        log.info("detector %s ignores option(s) %s", name, ", ".join(ignored))
    try:
        det = cls(**use)
    except DetectorUnavailable:
        raise
    except ImportError as e:
        raise DetectorUnavailable(f"{name}: {type(e).__name__}: {e}") from e
    return det


@dataclass
class DetectorSpec:
    """A detector described by its name and options, built where it runs
    (:meth:`build`): the CLI builds one in its own process, the Ray executor one in each
    worker (detector sessions cannot be sent between processes; a spec can).

    ``options`` as for :func:`create_detector`; a ``device`` of ``"auto"`` is resolved where
    the detector is built (``cuda`` when that process sees a GPU, else ``cpu``). ``source``:
    where given boxes came from (named in messages); ``requested``: the ``--detector`` the
    user gave (``auto`` or a name), recorded with the run."""

    name: str
    options: dict[str, Any]
    source: str | None = None
    requested: str | None = None

    def build(self) -> Detector:
        opts = dict(self.options)
        if opts.get("device") == "auto":
            opts["device"] = resolve_device("auto")
        det = create_detector(self.name, **opts)
        for attr, value in (("source", self.source), ("hmrcli_requested", self.requested)):
            if value is not None:
                try:
                    setattr(det, attr, value)
                except AttributeError:
                    pass
        return det


def default_detector(**opts: Any) -> Detector:
    """mmdet when it is installed with a checkpoint, else movenet, else mediapipe (offline).
    The returned detector's ``auto_skipped`` attribute says why better ones were not used.
    Raises DetectorUnavailable listing why each failed."""
    why: list[str] = []
    for name in AUTO_ORDER:
        # cheap check first: importing mmdet takes seconds, only to find no weights
        if name == "mmdet" and not opts.get("checkpoint"):
            prob = _mmdet_problem()
            if prob:
                why.append(f"{name}: {prob.rstrip('.')}")
                continue
        use = dict(opts)
        if name == "movenet" and str(use.get("device") or "cpu").startswith("cuda") and not _onnx_cuda():
            use["device"] = "cpu"  # pip's onnxruntime has no CUDA provider: MoveNet is cheap on the CPU
        try:
            det = create_detector(name, **use)
        except DetectorUnavailable as e:
            log.info("auto detector: %s unavailable: %s", name, e)
            why.append(f"{name}: {str(e).rstrip('.')}")
            continue
        try:
            det.auto_skipped = list(why)  # type: ignore[attr-defined]
        except AttributeError:
            pass
        return det
    raise DetectorUnavailable("no person detector is available here. " + "; ".join(why)
                              + ". Alternatives: --boxes FILE (your own boxes), or --detector whole-image "
                                "for images that each show one person filling the picture.")


def _onnx_cuda() -> bool:
    try:
        import onnxruntime  # local: a missing or broken onnxruntime must not break hmrcli.detect

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except Exception:
        return False


def _mmdet_problem() -> str | None:
    """Why mmdet cannot run with its default checkpoint (None when it can), without importing
    mmdet (the backend's ``availability()`` hook when it has one)."""
    if importlib.util.find_spec("hmrcli.detect.mmdet_backend") is None:
        return "the mmdet backend is not part of this hmrcli"
    try:
        mod = importlib.import_module("hmrcli.detect.mmdet_backend")
    except ImportError as e:
        return f"cannot import the mmdet backend ({e})"
    check = getattr(mod, "availability", None)
    if callable(check):  # optional hook: returns None or the reason
        return check()
    if importlib.util.find_spec("mmdet") is None:
        return f"mmdet is not installed. {getattr(mod, 'INSTALL_HINT', '')}".strip()
    resolve = getattr(mod, "_resolve_checkpoint", None)
    if callable(resolve):  # default weights present?
        try:
            resolve(None)
        except DetectorUnavailable as e:
            return str(e)
        except Exception as e:
            return f"{type(e).__name__}: {e}"
    return None


def available_detectors() -> list[dict[str, Any]]:
    """Every backend with ``available`` and, when not, ``problem``; cheap (loads no model).
    mmdet's checkpoint is only checked when its backend offers an ``availability()`` hook."""
    # start-up: backends load torch (~3 s) only when used
    from hmrcli.detect.blazepose_ssd import litert_problem
    from hmrcli.detect.mediapipe_backend import mediapipe_problem
    from hmrcli.detect.movenet_backend import movenet_problem

    def mediapipe_multi() -> str | None:  # the default (multi-person) mode also needs the TFLite runtime
        return mediapipe_problem() or litert_problem()

    problems = {"mmdet": _mmdet_problem, "movenet": movenet_problem, "mediapipe": mediapipe_multi}
    out = []
    for name, b in DETECTORS.items():
        prob = problems[name]() if name in problems else None
        out.append({"name": name, "description": b.description, "available": prob is None, "problem": prob})
    return out


def detect_images(detector: Detector, images: Sequence[np.ndarray], paths: Sequence[str | os.PathLike] | None = None
                  ) -> list[list[Detection]]:
    """``detector.detect(images)``, passing the paths to backends that need them (boxes)."""
    if getattr(detector, "needs_paths", False):
        return detector.detect(list(images), paths=list(paths) if paths is not None else None)
    return detector.detect(list(images))


@dataclass
class DetectedImage:
    """One input after detection: the decoded RGB image (None on error), its size, the
    detections (score order), or ``error = (stage, message)`` with stage "read", "detect"
    or "boxes"."""

    source: Any  # hmrcli.sources.ImageSource
    image: np.ndarray | None
    width: int
    height: int
    detections: list[Detection]
    error: tuple[str, str] | None = None


def detect_sources(sources: Sequence[Any], detector: Detector, batch_size: int = 8,
                   read: Callable[[Any], np.ndarray] | None = None,
                   max_persons: int | None = None) -> Iterator[DetectedImage]:
    """Read and detect ``sources`` (``ImageSource``s) in batches, yielding them in order.
    A file that cannot be read or a detector failure on one image gives that image an
    error and the batch goes on. DetectorUnavailable (a broken installation) is raised."""
    read = read or (lambda src: read_image(src.path))
    stage = getattr(detector, "error_stage", "detect")
    batch: list[DetectedImage] = []

    def keep(dets: list[Detection]) -> list[Detection]:
        return list(dets[:max_persons]) if max_persons else list(dets)

    def flush() -> Iterator[DetectedImage]:
        todo = [it for it in batch if it.error is None]
        if todo:
            try:
                res = detect_images(detector, [it.image for it in todo], [str(it.source.path) for it in todo])
                for it, dets in zip(todo, res, strict=True):
                    it.detections = keep(dets)
            except DetectorUnavailable:
                raise
            except Exception as e:
                if len(todo) == 1:
                    todo[0].error = (stage, _message(todo[0].source.path, e))
                else:  # find the image(s) that failed: one at a time
                    for it in todo:
                        try:
                            it.detections = keep(detect_images(detector, [it.image], [str(it.source.path)])[0])
                        except DetectorUnavailable:
                            raise
                        except Exception as e1:
                            it.error = (stage, _message(it.source.path, e1))
        yield from batch
        batch.clear()

    for src in sources:
        try:
            img = read(src)
            h, w = img.shape[:2]
            batch.append(DetectedImage(src, img, int(w), int(h), []))
        except ImageReadError as e:
            batch.append(DetectedImage(src, None, 0, 0, [], ("read", str(e))))
        except Exception as e:
            batch.append(DetectedImage(src, None, 0, 0, [], ("read", _message(src.path, e))))
        if len(batch) >= max(1, batch_size):
            yield from flush()
    if batch:
        yield from flush()


def _message(path: Any, e: BaseException) -> str:
    msg = str(e)
    p = str(path)
    if p and msg.startswith(p):
        return msg
    return f"{p}: {type(e).__name__}: {msg}" if not isinstance(e, LookupError) else f"{p}: {msg}"


def detection_summary(detector: Detector) -> str:
    """One line saying which detector runs (printed by the commands on stderr)."""
    name = getattr(detector, "name", type(detector).__name__)
    extra = ""
    if getattr(detector, "one_person_per_image", False) and name != "whole-image":
        extra = " -- finds at most ONE person per image (the most prominent)"
    elif name == "mediapipe":
        extra = " -- every person whose head is in view (offline)"
    elif name == "movenet":
        extra = " -- every person, up to 6 per pass (offline)"
    elif name == "whole-image":
        extra = " -- each image is one person filling the picture"
    elif name == "boxes":
        extra = f" -- boxes from {getattr(detector, 'source', 'a file')}"
    label = getattr(detector, "detector_label", None) or getattr(detector, "label", None)
    line = f"detector: {name}{f' ({label})' if isinstance(label, str) and label != name else ''}{extra}"
    skipped = getattr(detector, "auto_skipped", None)
    if skipped:
        line += "\n  (auto: " + "; ".join(skipped) + ")"
    return line
