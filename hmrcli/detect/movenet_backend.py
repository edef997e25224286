"""``movenet``: Google's MoveNet MultiPose Lightning under onnxruntime, offline, up to 6 people.

MoveNet MultiPose (Apache-2.0) is a bottom-up CenterNet-style network: for each of up to 6
people it predicts a person score, a person box and 17 COCO keypoints (x, y, score). It
ships in ``models/detect/movenet_multipose_lightning.onnx`` (9.6 MB; converted once from the
TF.js model by ``scripts/convert_movenet.py``, provenance in ``models/detect/LICENSES.md``)
and runs on onnxruntime's CPU provider (CUDA when asked for and available). TensorFlow is
not needed. Install::

    pip install onnxruntime

Preprocessing: the image is resized so that its longer side is ``input_size`` (256, the
size the model was made for; both sides are then padded with black, bottom and right, up
to multiples of 32). Larger sizes find smaller people but break close-ups apart (MoveNet
was trained on people who fill part of the frame), so ``input_size`` may also be a tuple
of sizes: the image is run at each and the results merged (same person: keypoints agree,
or boxes overlap).

Boxes: MoveNet's own person box united with the extent of the confident keypoints, grown by
``pad`` torso lengths (shoulder centre to hip centre; a third of the box's larger side when
the torso is not seen) on every side, then clipped to the image. No head-top allowance is
added: MoveNet's own box (its CenterNet box head) already reaches the top of
the head (measured on the hand-boxed sample photos: box tops within -6..+9 px of the hand
boxes for all 10 people found; any padding, e.g. 0.35 torso lengths above the face
keypoints, only lowered the IoU), so ``pad`` defaults to 0. Each detection is a
:class:`PoseDetection`: a :class:`~hmrcli.detect.base.Detection` that also carries the 17
keypoints (pixels) and their scores.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from hmrcli import assets
from hmrcli.detect.base import Detection, DetectorUnavailable
from hmrcli.geometry import box_iou_xyxy

__all__ = ["MoveNetDetector", "PoseDetection", "COCO17", "MODEL_ASSET", "INSTALL_HINT", "movenet_problem"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install onnxruntime"
#: the model, relative to hmrcli's models/ folder (found through :mod:`hmrcli.assets`)
MODEL_ASSET = "detect/movenet_multipose_lightning.onnx"
#: COCO-17 keypoint names in MoveNet's order
COCO17 = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
          "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
          "right_knee", "left_ankle", "right_ankle")
_FACE = (0, 1, 2, 3, 4)
_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP = 5, 6, 11, 12


@dataclass
class PoseDetection(Detection):
    """A person box plus MoveNet's keypoints: ``keypoints`` (17, 2) x, y full-image pixels
    (COCO-17 order, :data:`COCO17`; may lie outside the image), ``keypoint_scores`` (17,) in
    [0, 1], ``model_box_xyxy`` (4,) MoveNet's own box before padding and clipping."""

    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((17, 2)))
    keypoint_scores: np.ndarray = field(default_factory=lambda: np.zeros(17))
    model_box_xyxy: np.ndarray = field(default_factory=lambda: np.zeros(4))

    def keypoints_json(self) -> list[list[float]]:
        """[[x, y, score], ...] for the 17 keypoints."""
        return [[float(x), float(y), float(s)] for (x, y), s in zip(self.keypoints, self.keypoint_scores)]


def movenet_problem() -> str | None:
    """Why the backend cannot run here (None when it can), without importing onnxruntime."""
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return f"onnxruntime is not installed ({INSTALL_HINT})"
    try:
        assets.asset_path(MODEL_ASSET)
    except assets.AssetNotFoundError as e:
        return str(e)
    return None


def _torso(kp: np.ndarray, ks: np.ndarray, thr: float) -> float | None:
    """Shoulder-centre to hip-centre length when all four keypoints are confident."""
    idx = [_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP]
    if np.all(ks[idx] >= thr):
        t = float(np.linalg.norm((kp[_L_SHOULDER] + kp[_R_SHOULDER]) / 2 - (kp[_L_HIP] + kp[_R_HIP]) / 2))
        if t > 0:
            return t
    return None


def same_person(a: PoseDetection, b: PoseDetection, kpt_thr: float = 0.3, frac: float = 0.1,
                iou: float = 0.7) -> bool:
    """Whether two detections show the same person: the keypoints confident in both (at
    least 3) lie a median distance under ``frac`` times the taller of the two model boxes
    apart, or the boxes overlap by more than ``iou``."""
    both = (a.keypoint_scores >= kpt_thr) & (b.keypoint_scores >= kpt_thr)
    if both.sum() >= 3:
        d = float(np.median(np.linalg.norm(a.keypoints[both] - b.keypoints[both], axis=1)))
        size = max(a.model_box_xyxy[3] - a.model_box_xyxy[1], b.model_box_xyxy[3] - b.model_box_xyxy[1], 1.0)
        if d < frac * size:
            return True
    return box_iou_xyxy(a.box_xyxy, b.box_xyxy) > iou


class MoveNetDetector:
    """MoveNet MultiPose person boxes and COCO-17 keypoints (up to 6 people per pass).

    Args:
        score_thr: minimum MoveNet person score (0..1). Measured on the sample photos at
            input size 256: people score 0.25-0.67, the best-scoring false detection 0.09.
        input_size: longer side of the network input in pixels (multiple of 32, 128-1024),
            or a sequence of such sizes to run and merge. Sample photos (12 people): 256
            finds 9, 320 and 384 7, 512 6 (close-ups fall apart), ``(256, 512)`` 10 (also
            small, distant people) at about 4-5x the time of 256; none gave a false one.
            Default ``(256, 512)``.
        pad: extra margin around (MoveNet's box united with the confident keypoints), in
            torso lengths, on every side. 0 (measured best: MoveNet's box already covers the
            head top and the body's outline).
        keypoint_thr: keypoint score from which a keypoint counts as seen (box, torso,
            merging).
        device: ``cpu`` (onnxruntime's CPUExecutionProvider) or ``cuda``/``cuda:N``
            (CUDAExecutionProvider; DetectorUnavailable when this onnxruntime has none).
        model: path of the .onnx file (default: ``models/detect/movenet_multipose_lightning.onnx``
            through hmrcli's asset lookup).
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
    """

    name = "movenet"
    one_person_per_image = False

    def __init__(self, score_thr: float = 0.2, input_size: int | Sequence[int] = (256, 512), pad: float = 0.0,
                 keypoint_thr: float = 0.3, device: str = "cpu", model: str | os.PathLike | None = None,
                 threads: int | None = None) -> None:
        sizes = (input_size,) if isinstance(input_size, (int, np.integer)) else tuple(input_size)
        if not sizes or any(int(s) != s or s < 128 or s > 1024 or s % 32 for s in sizes):
            raise ValueError(f"input_size must be a multiple of 32 in 128..1024 (or a sequence of such), "
                             f"got {input_size!r}")
        if not 0.0 <= score_thr <= 1.0:
            raise ValueError(f"score_thr must be in [0, 1], got {score_thr}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.score_thr = float(score_thr)
        self.input_sizes = tuple(int(s) for s in sizes)
        self.pad = float(pad)
        self.keypoint_thr = float(keypoint_thr)
        self.device = str(device)
        try:
            import onnxruntime as ort  # local: a missing or broken onnxruntime makes only movenet unavailable
        except ImportError as e:
            raise DetectorUnavailable(f"movenet needs onnxruntime, which cannot be imported ({e}): "
                                      f"{INSTALL_HINT}") from e
        try:
            self.model_path = Path(model) if model is not None else assets.asset_path(MODEL_ASSET)
        except assets.AssetNotFoundError as e:
            raise DetectorUnavailable(f"movenet: {e}") from e
        if not self.model_path.is_file():
            raise DetectorUnavailable(f"movenet: model file {self.model_path} not found")
        if self.device == "cpu":
            providers: list = ["CPUExecutionProvider"]
        elif self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DetectorUnavailable(
                    f"device {self.device!r} asked for, but this onnxruntime ({ort.__version__}) has no "
                    f"CUDAExecutionProvider (pip install onnxruntime-gpu); use device='cpu'")
            dev_id = int(self.device.split(":", 1)[1]) if ":" in self.device else 0
            providers = [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        try:
            self._sess = ort.InferenceSession(str(self.model_path), sess_options=so, providers=providers)
        except Exception as e:  # corrupt file, wrong onnxruntime
            raise DetectorUnavailable(f"movenet: cannot load {self.model_path} with onnxruntime "
                                      f"{ort.__version__}: {type(e).__name__}: {e}") from e
        self._input = self._sess.get_inputs()[0].name
        sz = "+".join(str(s) for s in self.input_sizes)
        self.detector_label = f"movenet:multipose-lightning@{sz}"
        #: milliseconds of the last detect() call per image (preprocessing + network + decoding)
        self.last_ms: list[float] = []

    # ------------------------------------------------------------------ single pass
    def _prepare(self, image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
        h, w = image.shape[:2]
        s = size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        r = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        ph, pw = -(-nh // 32) * 32, -(-nw // 32) * 32
        x = np.zeros((1, ph, pw, 3), np.int32)
        x[0, :nh, :nw] = r
        return x, s

    def raw(self, image: np.ndarray, size: int = 256) -> np.ndarray:
        """MoveNet's raw output for one image at one input size, mapped to full-image pixels:
        (6, 56) rows of 17 x (x, y, score), then x1, y1, x2, y2, person score."""
        x, s = self._prepare(image, size)
        out = self._sess.run(None, {self._input: x})[0][0].astype(np.float64)
        ph, pw = x.shape[1:3]
        res = np.empty_like(out)
        kp = out[:, :51].reshape(6, 17, 3)
        res[:, :51] = np.stack([kp[..., 1] * pw / s, kp[..., 0] * ph / s, kp[..., 2]], -1).reshape(6, 51)
        b = out[:, 51:55]
        res[:, 51:55] = np.stack([b[:, 1] * pw, b[:, 0] * ph, b[:, 3] * pw, b[:, 2] * ph], -1) / s
        res[:, 55] = out[:, 55]
        return res

    def _box(self, kp: np.ndarray, ks: np.ndarray, model_box: np.ndarray, w: int, h: int) -> np.ndarray | None:
        lo, hi = model_box[:2].copy(), model_box[2:].copy()
        seen = ks >= self.keypoint_thr
        if seen.any():
            lo, hi = np.minimum(lo, kp[seen].min(0)), np.maximum(hi, kp[seen].max(0))
        if self.pad > 0:
            t = _torso(kp, ks, self.keypoint_thr)
            if t is None:  # no full torso seen: a third of the box's larger side
                t = float(max(hi - lo)) / 3.0
            lo, hi = lo - self.pad * t, hi + self.pad * t
        box = np.array([max(lo[0], 0.0), max(lo[1], 0.0), min(hi[0], w - 1.0), min(hi[1], h - 1.0)])
        if box[2] - box[0] < 1.0 or box[3] - box[1] < 1.0:
            return None
        return box

    def detect_one(self, image: np.ndarray) -> list[PoseDetection]:
        """The people in one RGB uint8 image, by decreasing score."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"movenet expects RGB uint8 images (H, W, 3), got "
                             f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
        h, w = image.shape[:2]
        cands: list[PoseDetection] = []
        for size in self.input_sizes:
            for row in self.raw(image, size):
                score = float(row[55])
                if score < self.score_thr:
                    continue
                kp3 = row[:51].reshape(17, 3)
                kp, ks = kp3[:, :2].copy(), kp3[:, 2].copy()
                mbox = row[51:55].copy()
                box = self._box(kp, ks, mbox, w, h)
                if box is None:
                    continue
                cands.append(PoseDetection(box, score, self.detector_label, keypoints=kp, keypoint_scores=ks,
                                           model_box_xyxy=mbox))
        cands.sort(key=lambda d: -d.score)
        kept: list[PoseDetection] = []
        for d in cands:
            if not any(same_person(d, k, self.keypoint_thr) for k in kept):
                kept.append(d)
        return kept

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        out: list[list[Detection]] = []
        self.last_ms = []
        for img in images:
            t0 = time.perf_counter()
            out.append(list(self.detect_one(img)))
            self.last_ms.append((time.perf_counter() - t0) * 1000.0)
        return out

    def close(self) -> None:
        self._sess = None  # type: ignore[assignment]

    def __enter__(self) -> "MoveNetDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
