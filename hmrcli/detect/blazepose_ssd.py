"""BlazePose's person detector (``pose_detection.tflite`` of mediapipe 0.10.21) run directly.

MediaPipe's Pose solution runs this detector once on the whole (letterboxed) image and keeps
only its best detection. To find every person, hmrcli runs the same model on the whole image
and on overlapping square tiles, decodes all detections above a score, and merges them
(:class:`BlazePoseSSD`). Why by hand: mediapipe's Python API exposes the detector only inside
its one-person graph, and no maintained library decodes this model's outputs; the decoding
below is MediaPipe's own configuration of the model (``pose_detection_cpu.pbtxt``), written
out in numpy:

* input 224x224 RGB, the image letterboxed (aspect kept, zero padding), values in [-1, 1];
* 2254 SSD anchors of fixed size 1 (strides 8, 16, 32, 32, 32; 2 anchors per cell and
  layer, layers of equal stride share a grid: 28x28x2 + 14x14x2 + 7x7x6);
* per anchor 12 regressed values ``(x, y, w, h, k0x, k0y, ..., k3x, k3y)`` in input pixels
  relative to the anchor centre, and one logit (sigmoid, clipped at +-100);
* keypoints: k0 the hip centre, k1 a point whose distance from k0 is the radius of a circle
  enclosing the whole body (MediaPipe's body ROI is a square of side ``2.5 * |k1 - k0|``
  around k0), k2 the shoulder centre, k3 the upper-body radius point;
* weighted non-maximum suppression at IoU 0.3 (overlapping detections averaged by score).

The detector is face-anchored (its box is the face box): it finds persons whose head is in
view. The model runs under ``ai-edge-litert`` (Google's TFLite runtime, the ``[fit]`` extra).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hmrcli.detect.base import DetectorUnavailable
from hmrcli.geometry import box_iou_xyxy

__all__ = ["SSDDetection", "BlazePoseSSD", "ssd_anchors", "decode_ssd", "weighted_nms", "square_tiles",
           "litert_problem", "LITERT_HINT"]

INPUT_SIZE = 224
_STRIDES = (8, 16, 32, 32, 32)
LITERT_HINT = "pip install ai-edge-litert (part of hmrcli's [fit] extra; `make install-fit`)"


def litert_problem() -> str | None:
    """Why the TFLite runtime is missing (None when it imports)."""
    try:
        spec = importlib.util.find_spec("ai_edge_litert")
    except (ImportError, ValueError):
        spec = None
    return None if spec is not None else f"the TFLite runtime ai-edge-litert is not installed ({LITERT_HINT})"


def ssd_anchors() -> np.ndarray:
    """(2254, 2) anchor centres (x, y) in [0, 1] of the 224x224 input, in the model's order."""
    out = []
    i = 0
    while i < len(_STRIDES):
        stride = _STRIDES[i]
        j = i
        while j < len(_STRIDES) and _STRIDES[j] == stride:
            j += 1
        per_cell = 2 * (j - i)  # aspect ratio 1 + the interpolated scale, per layer of this stride
        n = math.ceil(INPUT_SIZE / stride)
        ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], 1)
        out.append(np.repeat(cells, per_cell, axis=0))
        i = j
    return np.concatenate(out)


@dataclass
class SSDDetection:
    """One detection in full-image pixels: ``score`` in [0, 1]; ``face_xyxy`` the face box;
    ``keypoints`` (4, 2): hip centre, body-radius point, shoulder centre, upper-body point."""

    score: float
    face_xyxy: np.ndarray
    keypoints: np.ndarray

    @property
    def centre(self) -> np.ndarray:
        return self.keypoints[0]

    @property
    def radius(self) -> float:
        """Radius (pixels) of the circle around the hip centre holding the whole body."""
        return float(np.linalg.norm(self.keypoints[1] - self.keypoints[0]))

    def body_box(self, scale: float = 1.25) -> np.ndarray:
        """The square body region (x1, y1, x2, y2) MediaPipe crops for its landmark model."""
        c, h = self.centre, scale * self.radius
        return np.array([c[0] - h, c[1] - h, c[0] + h, c[1] + h])


def decode_ssd(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, min_score: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Decode the model outputs (2254, 12) and (2254,) -> (scores (K,), values (K, 12)) with
    values (x1, y1, x2, y2, k0x, k0y, ...) in [0, 1] of the model input, for scores >= min_score."""
    scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.astype(np.float64), -100.0, 100.0)))
    keep = scores >= min_score
    r = raw_boxes[keep].astype(np.float64) / INPUT_SIZE
    a = anchors[keep]
    cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
    w, h = r[:, 2], r[:, 3]
    kps = r[:, 4:12].reshape(-1, 4, 2) + a[:, None, :]
    vals = np.concatenate([np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), kps.reshape(-1, 8)], 1)
    return scores[keep], vals


def weighted_nms(scores: np.ndarray, values: np.ndarray, iou_thr: float = 0.3, box_cols: slice = slice(0, 4)
                 ) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression: the best remaining detection absorbs
    every other one whose box overlaps it by IoU > ``iou_thr``; the merged values are the
    score-weighted mean, the score the best one's. Returns (scores (K,), values (K, C))."""
    order = np.argsort(-scores)
    scores, values = scores[order], values[order]
    out_s, out_v = [], []
    alive = np.ones(len(scores), dtype=bool)
    for i in range(len(scores)):
        if not alive[i]:
            continue
        idx = np.flatnonzero(alive)
        ov = np.atleast_1d(box_iou_xyxy(values[i, box_cols], values[idx][:, box_cols]))
        grp = idx[ov > iou_thr]
        grp = np.union1d(grp, [i])
        w = scores[grp]
        out_s.append(scores[i])
        out_v.append((values[grp] * w[:, None]).sum(0) / w.sum())
        alive[grp] = False
    if not out_s:
        return np.zeros(0), np.zeros((0, values.shape[1]))
    return np.array(out_s), np.stack(out_v)


def square_tiles(width: int, height: int, side: int, overlap: float = 0.5) -> list[tuple[int, int, int]]:
    """Square tiles (x, y, side) covering a ``width x height`` image, neighbours overlapping
    by ``overlap`` of the side; the last row/column is aligned with the border."""
    side = int(max(1, min(side, width, height)))
    step = max(1, int(round(side * (1.0 - overlap))))

    def starts(n: int) -> list[int]:
        s = list(range(0, max(n - side, 0) + 1, step))
        if s[-1] + side < n:
            s.append(n - side)
        return s

    return [(x, y, side) for y in starts(height) for x in starts(width)]


class BlazePoseSSD:
    """BlazePose's person detector on the whole image and on overlapping tiles.

    Args:
        model_path: ``pose_detection.tflite`` (default: the one in the installed mediapipe).
        min_score: detection score threshold.
        tile_scales: tile sides as fractions of the image's shorter side (1.0: squares the
            height of a landscape photo); the whole letterboxed image is always searched too.
        overlap: tile overlap (fraction of the side).
        threads: TFLite interpreter threads.
    """

    def __init__(self, model_path: str | Path | None = None, min_score: float = 0.5,
                 tile_scales: tuple[float, ...] = (1.0, 0.5), overlap: float = 0.5, threads: int = 2) -> None:
        prob = litert_problem()
        if prob:
            raise DetectorUnavailable(prob)
        # optional dependency (ai-edge-litert, the [fit] extra)
        from ai_edge_litert.interpreter import Interpreter

        if model_path is None:
            import mediapipe  # optional dependency (mediapipe)

            model_path = Path(mediapipe.__file__).parent / "modules/pose_detection/pose_detection.tflite"
        self.model_path = str(model_path)
        self.min_score = float(min_score)
        self.tile_scales = tuple(float(s) for s in tile_scales)
        self.overlap = float(overlap)
        self._it = Interpreter(model_path=self.model_path, num_threads=int(threads))
        self._it.allocate_tensors()
        self._in = self._it.get_input_details()[0]["index"]
        outs = sorted(self._it.get_output_details(), key=lambda d: -int(d["shape"][-1]))
        self._out_boxes, self._out_scores = outs[0]["index"], outs[1]["index"]
        self._anchors = ssd_anchors()

    def run_square(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detections in one image (letterboxed to the 224x224 input): (scores, values) with
        values (x1, y1, x2, y2, keypoints...) in that image's pixels."""
        h, w = image.shape[:2]
        s = INPUT_SIZE / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        px, py = (INPUT_SIZE - nw) // 2, (INPUT_SIZE - nh) // 2
        buf = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
        small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        buf[py:py + nh, px:px + nw] = small.astype(np.float32) / 127.5 - 1.0
        self._it.set_tensor(self._in, buf[None])
        self._it.invoke()
        raw_b = self._it.get_tensor(self._out_boxes)[0]
        raw_s = self._it.get_tensor(self._out_scores)[0, :, 0]
        scores, vals = decode_ssd(raw_b, raw_s, self._anchors, self.min_score)
        scores, vals = weighted_nms(scores, vals)
        pts = vals.reshape(-1, 6, 2) * INPUT_SIZE
        pts = (pts - np.array([px, py])) / s
        return scores, pts.reshape(-1, 12)

    def __call__(self, image: np.ndarray) -> list[SSDDetection]:
        """Every person detection in an RGB uint8 image, in full-image pixels, best first."""
        h, w = image.shape[:2]
        all_s, all_v = [], []
        s, v = self.run_square(image)
        all_s.append(s)
        all_v.append(v)
        short = min(h, w)
        for frac in self.tile_scales:
            side = int(round(frac * short))
            if side < 32 or (frac >= 1.0 and h == w):
                continue
            for x, y, t in square_tiles(w, h, side, self.overlap):
                s, v = self.run_square(np.ascontiguousarray(image[y:y + t, x:x + t]))
                if len(s):
                    all_s.append(s)
                    all_v.append(v + np.tile([x, y], 6))
        scores, vals = np.concatenate(all_s), np.concatenate(all_v)
        if not len(scores):
            return []
        # tiles see the same person: merge by the overlap of the body regions
        body = np.concatenate([vals[:, 4:6] - _radius(vals)[:, None], vals[:, 4:6] + _radius(vals)[:, None]], 1)
        merged_s, merged = weighted_nms(scores, np.concatenate([body, vals], 1), iou_thr=0.4, box_cols=slice(0, 4))
        return [SSDDetection(float(sc), m[4:8], m[8:16].reshape(4, 2)) for sc, m in zip(merged_s, merged)]


def _radius(vals: np.ndarray) -> np.ndarray:
    return np.linalg.norm(vals[:, 6:8] - vals[:, 4:6], axis=1)
