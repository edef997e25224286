"""Person landmarks for fitting: BlazePose on the person's RoIs, fused, mapped to COCO-17.

The landmark model is MediaPipe's BlazePose (mediapipe 0.10.21, the ``[fit]`` extra, see
:mod:`hmrcli.detect.mediapipe_backend`): per call 33 2D landmarks with a visibility score
and 33 metric 3D "world" landmarks (origin between the hips).

Multi-RoI at test time: the person's box becomes a square crop box, the M RoIs of the
Multi-RoI layout (:func:`hmrcli.geometry.make_rois`: shifted and scaled copies) are cropped
and BlazePose runs on each crop. The landmark sets are mapped back to full-image pixels and
fused robustly (:func:`fuse_landmark_sets`): RoIs whose well-seen landmarks lie far from the
consensus are dropped (BlazePose then found someone else, or nobody coherent); per landmark
the position is the visibility-weighted median over the kept RoIs, a landmark outside the
crop it came from weighing little; its confidence is the mean visibility of the RoIs that saw
it inside their crop and agree with the fused position -- a RoI that cut the limb off does
not lower it. ``num_rois=1`` is a single crop (the plain way).

Mirrored views (``mirror=True``, the default): every RoI's crop is also given to BlazePose
flipped left-right; its landmarks are mapped back (x mirrored inside the crop, the left and
right landmarks swapped, the world landmarks' x negated) and enter the fusion as one more
set, so M RoIs give 2M *views*. BlazePose is not mirror-symmetric: on the same crop the two
views often disagree on which way a limb points in depth or which side is which, and the
median over both halves such errors; their disagreement also feeds the quality block's
spreads (:mod:`hmrcli.engine.quality`). Measured on synthetic renders (README, "Which
meshes to trust"): fewer persons with no landmarks, lower fit error, for twice BlazePose's
time.

Correspondence with the body model (``BLAZEPOSE_TO_COCO17``): the COCO-17 keypoints of
:class:`hmrcli.body.BodyModel` (``keypoints_coco``) are matched to BlazePose landmarks of the
same name: nose 0, left/right eye 2/5 (eye centres), ears 7/8, shoulders 11/12, elbows
13/14, wrists 15/16, hips 23/24, knees 25/26, ankles 27/28. BlazePose's remaining
landmarks (inner/outer eye corners, mouth, fingers, heels, toes) have no body-model
counterpart and are not used. "left" is the person's left.

Frames and units: ``kp2d`` full-image pixels (OpenCV: pixel (0, 0) is the centre of the
top-left pixel); ``kp3d`` metres in MediaPipe's world frame, which is aligned with the
camera (x right, y down, z away from the camera, i.e. OpenCV camera axes) with its origin
at the midpoint of the hips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hmrcli import geometry as G

__all__ = [
    "BLAZEPOSE_NAMES",
    "BLAZEPOSE_MIRROR",
    "BLAZEPOSE_TO_COCO17",
    "COCO17_LIMBS",
    "limb_polygons",
    "erase_regions",
    "PersonLandmarks",
    "Landmarker",
    "fuse_landmark_sets",
]

BLAZEPOSE_NAMES: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
)
#: BlazePose landmark index of each COCO-17 keypoint (``hmrcli.body.COCO17_NAMES`` order).
BLAZEPOSE_TO_COCO17: tuple[int, ...] = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
#: COCO-17 keypoint pairs joined by a limb (or the torso's sides and diagonals, the head).
COCO17_LIMBS: tuple[tuple[int, int], ...] = (
    (5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16),  # arms, legs
    (5, 6), (11, 12), (5, 11), (6, 12), (5, 12), (6, 11),  # torso
    (0, 1), (0, 2), (1, 3), (2, 4), (0, 5), (0, 6))  # head, neck
#: BlazePose landmark index of each landmark's mirror image (left <-> right; the nose is its own).
BLAZEPOSE_MIRROR: tuple[int, ...] = tuple(
    BLAZEPOSE_NAMES.index(n.replace("left", "@").replace("right", "left").replace("@", "right")) for n in BLAZEPOSE_NAMES)
_MIRROR_INDEX = np.array(BLAZEPOSE_MIRROR)


@dataclass
class PersonLandmarks:
    """Fused landmarks of one person, in COCO-17 order.

    kp2d (17, 2) full-image pixels; conf2d (17,) in [0, 1] (BlazePose visibility, 0 where
    the landmark is unusable); kp3d (17, 3) metres, camera-aligned axes, origin between the
    hips; conf3d (17,); rois (M, 3) the RoI boxes (cx, cy, b) used; rois_ok (M,) bool: RoIs
    with at least one view whose result entered the fusion; blazepose2d (33, 2) /
    blazepose_vis (33,) / blazepose3d (33, 3): the fused full BlazePose sets (for overlays and
    PC-HMR streams). Per view (V = M, or 2M with mirrored views; view v is RoI ``view_roi[v]``,
    flipped left-right when ``view_mirrored[v]``; None: one plain view per RoI): roi_kp2d (V,
    17, 2) pixels and roi_kp3d (V, 17, 3) metres (NaN where the view found nobody), roi_vis
    (V, 17), roi_in_crop (V, 17) bool, views_ok (V,) bool: views kept by the fusion.
    masked_person: the index of another person of the image whose limbs were erased
    before BlazePose ran (:func:`hmrcli.engine.fit.landmarks_for_persons`), else None.
    """

    kp2d: np.ndarray
    conf2d: np.ndarray
    kp3d: np.ndarray
    conf3d: np.ndarray
    rois: np.ndarray
    rois_ok: np.ndarray
    blazepose2d: np.ndarray
    blazepose_vis: np.ndarray
    blazepose3d: np.ndarray
    roi_kp2d: np.ndarray | None = None
    roi_vis: np.ndarray | None = None
    roi_kp3d: np.ndarray | None = None
    roi_in_crop: np.ndarray | None = None
    view_roi: np.ndarray | None = None
    view_mirrored: np.ndarray | None = None
    views_ok: np.ndarray | None = None
    masked_person: int | None = None

    @property
    def num_views(self) -> int:
        """V: landmark sets BlazePose was run for (RoIs, times 2 with mirrored views)."""
        return len(self.views_ok) if self.views_ok is not None else len(self.rois)

    @property
    def views_used(self) -> int:
        """Views whose landmarks entered the fusion."""
        return int(np.asarray(self.views_ok if self.views_ok is not None else self.rois_ok).sum())

    def to_json(self) -> dict:
        return {
            "keypoints": "COCO-17 (hmrcli.body.COCO17_NAMES)",
            "kp2d_px": np.round(self.kp2d, 2).tolist(),
            "conf2d": np.round(self.conf2d, 4).tolist(),
            "kp3d_m": np.round(self.kp3d, 4).tolist(),
            "rois_used": int(self.rois_ok.sum()),
            "rois": int(len(self.rois)),
            "views_used": self.views_used,
            "views": self.num_views,
            "mirrored_views": bool(self.view_mirrored is not None and np.any(self.view_mirrored)),
            "masked_person": self.masked_person,
        }


def limb_polygons(kp2d: np.ndarray, conf: np.ndarray, half_width: float) -> list[np.ndarray]:
    """Quadrilaterals (4, 2) full-image pixels covering a person's limbs: one per
    :data:`COCO17_LIMBS` pair whose two keypoints have confidence > 0, the segment widened by
    ``half_width`` pixels on each side and lengthened by it at both ends. Used to erase a
    person from an image before BlazePose looks for the person behind it (:func:`erase_regions`)."""
    p = np.asarray(kp2d, dtype=np.float64)
    c = np.asarray(conf, dtype=np.float64)
    polys = []
    for a, b in COCO17_LIMBS:
        if not (c[a] > 0 and c[b] > 0):
            continue
        d = p[b] - p[a]
        n = float(np.linalg.norm(d))
        u = d / n if n > 1e-6 else np.array([1.0, 0.0])
        v = np.array([-u[1], u[0]]) * half_width
        a0, b0 = p[a] - u * half_width, p[b] + u * half_width
        polys.append(np.stack([a0 + v, b0 + v, b0 - v, a0 - v]))
    return polys


#: :func:`erase_regions` fills at most this many pixels along the region's longer side
ERASE_MAX_SIDE = 256


def erase_regions(image: np.ndarray, polygons: list[np.ndarray], max_side: int = ERASE_MAX_SIDE) -> np.ndarray:
    """A copy of the RGB uint8 ``image`` with the convex ``polygons`` (N, 2) full-image pixels
    filled in from their surroundings (OpenCV's Telea inpainting), so that BlazePose looking
    for the person behind no longer sees the person in front. Filling with a flat colour
    leaves a person-shaped silhouette, which BlazePose's detector can take for a person
    (measured on the crossing scene of ``benchmarks/sequence_check.py``: docs/method.md §8.1).
    The polygons' region is inpainted at most ``max_side`` pixels on its longer side
    (downscaled first: BlazePose sees a person at 384 px, and the cost of inpainting grows with
    the area) and pasted back inside the polygons only."""
    import cv2

    out = np.array(image, copy=True)
    polys = [np.round(np.asarray(q, dtype=np.float64)).astype(np.int64) for q in polygons]
    if not polys:
        return out
    h, w = out.shape[:2]
    pts = np.concatenate(polys)
    scale = min(1.0, max_side / float(max((pts.max(0) - pts.min(0)).max(), 1)))
    pad = int(np.ceil(8 / scale))  # the inpainting reads the 8 pixels around the region (at its scale)
    x0, y0 = np.clip(pts.min(0) - pad, 0, [w, h])
    x1, y1 = np.clip(pts.max(0) + pad + 1, 0, [w, h])
    if x1 <= x0 or y1 <= y0:  # wholly outside the image
        return out
    sub = out[y0:y1, x0:x1]
    msub = np.zeros(sub.shape[:2], np.uint8)
    for q in polys:  # one by one: fillPoly would leave where two polygons overlap unfilled
        cv2.fillConvexPoly(msub, (q - [x0, y0]).astype(np.int32), 255)
    if not msub.any():
        return out
    if scale < 1.0:
        size = (max(int(round(sub.shape[1] * scale)), 1), max(int(round(sub.shape[0] * scale)), 1))
        small = cv2.resize(np.ascontiguousarray(sub), size, interpolation=cv2.INTER_AREA)
        msmall = (cv2.resize(msub, size, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8) * 255
        filled = cv2.resize(cv2.inpaint(small, msmall, 3, cv2.INPAINT_TELEA), (sub.shape[1], sub.shape[0]),
                            interpolation=cv2.INTER_LINEAR)
    else:
        filled = cv2.inpaint(np.ascontiguousarray(sub), msub, 3, cv2.INPAINT_TELEA)
    inside = msub > 0
    sub[inside] = filled[inside]
    return out


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-column weighted median. values (R, ...) over axis 0, weights (R,) >= 0."""
    order = np.argsort(values, axis=0)
    v = np.take_along_axis(values, order, axis=0)
    w = np.broadcast_to(weights.reshape((-1,) + (1,) * (values.ndim - 1)), values.shape)
    w = np.take_along_axis(np.ascontiguousarray(w), order, axis=0)
    cw = np.cumsum(w, axis=0)
    total = cw[-1:]
    idx = np.argmax(cw >= 0.5 * total, axis=0)
    return np.take_along_axis(v, idx[None], axis=0)[0]


def fuse_landmark_sets(
    lm2d: np.ndarray, vis: np.ndarray, lm3d: np.ndarray, box_size: float, outlier_frac: float = 0.15,
    in_crop: np.ndarray | None = None, agree_frac: float = 0.06, outside_crop_weight: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Robustly fuse R landmark sets of one person.

    lm2d (R, L, 2) pixels, vis (R, L), lm3d (R, L, 3); box_size: the person's box size in
    pixels (scale of the tests); in_crop (R, L) bool: whether each landmark lies inside the
    crop it was predicted from (None: all inside). Returns fused (L, 2), (L,), (L, 3) and the
    (R,) mask of sets kept.

    1. Sets are compared on the landmarks they see well (visibility > 0.5 and inside their
       crop): a set whose median distance from the first-pass median exceeds
       ``outlier_frac * box_size`` is dropped (BlazePose found someone else there).
    2. Positions: per landmark, the median over the kept sets weighted by visibility, a
       landmark outside its crop (BlazePose extrapolating) weighing ``outside_crop_weight``.
    3. Confidence: per landmark, the mean visibility of the kept sets that saw it inside
       their crop AND agree with the fused position (within ``agree_frac * box_size``);
       sets that did not see it do not lower it (a shifted RoI that cuts a wrist off says
       nothing about the wrist). Landmarks no set saw inside its crop get the mean
       visibility of the agreeing sets times ``outside_crop_weight``; landmarks no set
       agrees on get 0.
    """
    lm2d = np.asarray(lm2d, dtype=np.float64)
    vis = np.asarray(vis, dtype=np.float64)
    lm3d = np.asarray(lm3d, dtype=np.float64)
    r = lm2d.shape[0]
    if r == 0:
        raise ValueError("no landmark sets to fuse")
    inside = np.ones(vis.shape, dtype=bool) if in_crop is None else np.asarray(in_crop, dtype=bool)
    good = (vis > 0.5) & inside
    med = np.median(lm2d, axis=0)
    dist = np.linalg.norm(lm2d - med[None], axis=-1)  # (R, L)
    dev = np.array([np.median(dist[k][good[k]]) if good[k].sum() >= 3 else np.median(dist[k]) for k in range(r)])
    keep = dev <= outlier_frac * box_size
    if not keep.any():
        keep = dev <= dev.min()
    a2, v, a3, ins = lm2d[keep], vis[keep], lm3d[keep], inside[keep]
    w = np.clip(v, 1e-3, 1.0) * np.where(ins, 1.0, outside_crop_weight)  # (R', L)
    fused2 = np.stack([_weighted_median(a2[:, j], w[:, j]) for j in range(a2.shape[1])])
    fused3 = np.stack([_weighted_median(a3[:, j], w[:, j]) for j in range(a3.shape[1])])
    agree = np.linalg.norm(a2 - fused2[None], axis=-1) <= agree_frac * box_size  # (R', L)
    seen = agree & ins
    n_seen, n_agree = seen.sum(0), agree.sum(0)
    conf_seen = (v * seen).sum(0) / np.maximum(n_seen, 1)
    conf_unseen = outside_crop_weight * (v * agree).sum(0) / np.maximum(n_agree, 1)
    fused_v = np.where(n_seen > 0, conf_seen, np.where(n_agree > 0, conf_unseen, 0.0))
    return fused2, fused_v, fused3, keep


class Landmarker:
    """BlazePose landmarks per person box, optionally on every Multi-RoI crop (fused).

    Args:
        num_rois: 1 (a single crop) .. 5 (the Multi-RoI layout).
        crop_size: side in pixels of the square crops given to BlazePose.
        min_visibility: landmarks below this visibility get confidence 0.
        outside_weight: factor on the confidence of landmarks that lie outside the image
            (BlazePose extrapolates cut-off limbs; they steer the fit only weakly).
        detector: a :class:`hmrcli.detect.mediapipe_backend.MediaPipeDetector` to use
            (one is created otherwise).
        landmark_model: ``full`` (shipped with mediapipe) or ``heavy`` (BlazePose GHUM Heavy,
            :mod:`hmrcli.detect.blazepose_models`).
        mirror: also run BlazePose on every crop flipped left-right and fuse both views
            (module docstring).
    Raises:
        hmrcli.detect.DetectorUnavailable: mediapipe 0.10.21 is not installed.
    """

    def __init__(self, num_rois: int = 5, crop_size: int = 384, min_visibility: float = 0.3,
                 detector=None, box_rescale: float = 1.2, outside_weight: float = 0.2,
                 landmark_model: str = "full", mirror: bool = True) -> None:
        from hmrcli.detect.mediapipe_backend import MediaPipeDetector

        if not 1 <= num_rois <= 5:
            raise ValueError(f"num_rois must be 1..5, got {num_rois}")
        self.num_rois = int(num_rois)
        self.crop_size = int(crop_size)
        self.min_visibility = float(min_visibility)
        self.box_rescale = float(box_rescale)
        self.outside_weight = float(outside_weight)
        self.mirror = bool(mirror)
        # Low thresholds: the crop already holds the person; visibility weights the fit.
        self.detector = detector if detector is not None else MediaPipeDetector(
            score_thr=0.3, landmark_thr=0.3, multi=False, landmark_model=landmark_model)
        self.landmark_model = getattr(self.detector, "landmark_model", landmark_model)

    def close(self) -> None:
        self.detector.close()

    def __call__(self, image: np.ndarray, box_xyxy: np.ndarray,
                 mask: list[np.ndarray] | None = None) -> PersonLandmarks | None:
        """Landmarks of the person in ``box_xyxy`` (x1, y1, x2, y2 pixels) of the RGB uint8
        ``image``; None when BlazePose finds nobody in any RoI. ``mask``: convex polygons (N, 2)
        in full-image pixels erased before cropping (another person to leave out,
        :func:`limb_polygons`; :func:`erase_regions`)."""
        if mask:
            image = erase_regions(image, mask)
        box = G.box_from_xyxy(np.asarray(box_xyxy, dtype=np.float64)[None], aspect="square",
                              rescale=self.box_rescale)
        rois = G.make_rois(box, self.num_rois)[0]  # (M, 3)
        m = len(rois)
        s = self.crop_size
        hw = (s, s)
        affines = G.crop_affine(rois, hw)
        view_roi = np.tile(np.arange(m), 2 if self.mirror else 1)
        view_mirrored = np.repeat([False, True], m)[:len(view_roi)]
        sets2, sets_v, sets3, inside = [], [], [], []
        ok = np.zeros(len(view_roi), dtype=bool)
        crops: dict[int, np.ndarray] = {}
        for v, (r, mirrored) in enumerate(zip(view_roi, view_mirrored)):
            if r not in crops:
                crops[r] = G.crop_image_np(image, affines[r], hw)
            res = self.detector.pose(np.ascontiguousarray(crops[r][:, ::-1]) if mirrored else crops[r])
            if res is None:
                continue
            c, vis, w3 = np.asarray(res.landmarks), np.asarray(res.visibility), np.asarray(res.world_landmarks)
            if mirrored:  # back to the unflipped crop: x mirrored, left <-> right, world x negated
                c, vis, w3 = c[_MIRROR_INDEX], vis[_MIRROR_INDEX], w3[_MIRROR_INDEX]  # (copies: fancy indexing)
                # BlazePose's x is its normalised coordinate times the width (0 = the crop's left
                # edge), so the mirror is s - x (measured on the sample photos: the two views'
                # well-seen landmarks then agree to a median 0.0-0.3 px; with s - 1 - x, 1.0-1.3 px)
                c[:, 0] = s - c[:, 0]
                w3[:, 0] = -w3[:, 0]
            pts = G.map_points(c, G.invert_affine(affines[r]))
            if not np.all(np.isfinite(pts)) or not np.all(np.isfinite(w3)):
                continue
            inside.append((c[:, 0] >= 0) & (c[:, 1] >= 0) & (c[:, 0] <= s - 1) & (c[:, 1] <= s - 1))
            sets2.append(pts)
            sets_v.append(vis)
            sets3.append(w3)
            ok[v] = True
        if not sets2:
            return None
        f2, fv, f3, keep = fuse_landmark_sets(np.stack(sets2), np.stack(sets_v), np.stack(sets3), float(box[0, 2]),
                                              in_crop=np.stack(inside))
        idx = np.flatnonzero(ok)
        ok[idx[~keep]] = False
        rois_ok = np.zeros(m, dtype=bool)
        rois_ok[view_roi[ok]] = True
        sel = list(BLAZEPOSE_TO_COCO17)
        conf = np.where(fv[sel] >= self.min_visibility, fv[sel], 0.0)
        # landmarks outside the image are BlazePose's guesses: they keep a small weight
        h, w = image.shape[:2]
        p = f2[sel]
        outside = (p[:, 0] < 0) | (p[:, 1] < 0) | (p[:, 0] > w - 1) | (p[:, 1] > h - 1)
        conf = np.where(outside, conf * self.outside_weight, conf)
        nv = len(view_roi)
        roi2, roi3 = np.full((nv, 17, 2), np.nan), np.full((nv, 17, 3), np.nan)
        roi_v, roi_in = np.zeros((nv, 17)), np.zeros((nv, 17), dtype=bool)
        roi2[idx], roi3[idx] = np.stack(sets2)[:, sel], np.stack(sets3)[:, sel]
        roi_v[idx], roi_in[idx] = np.stack(sets_v)[:, sel], np.stack(inside)[:, sel]
        return PersonLandmarks(
            kp2d=f2[sel], conf2d=conf, kp3d=f3[sel], conf3d=conf.copy(), rois=rois, rois_ok=rois_ok,
            blazepose2d=f2, blazepose_vis=fv, blazepose3d=f3,
            roi_kp2d=roi2, roi_vis=roi_v, roi_kp3d=roi3, roi_in_crop=roi_in,
            view_roi=view_roi, view_mirrored=view_mirrored, views_ok=ok,
        )
