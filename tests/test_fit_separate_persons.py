"""Two persons whose boxes overlap: when BlazePose finds the same body in both boxes, the body
goes to the box that matches it and BlazePose looks again in the other box with that body's
limbs erased (hmrcli.engine.fit.landmarks_for_persons)."""

import numpy as np

from hmrcli.engine.base import PersonBox
from hmrcli.engine.fit import landmarks_for_persons
from hmrcli.fit.landmarks import PersonLandmarks, limb_polygons


def _body(x0: float, y0: float, h: float = 200.0) -> np.ndarray:
    """COCO-17 keypoints of an upright stick figure h pixels tall, top of the head at (x0, y0)."""
    s = h / 8.0
    rows = [(0, 0.5), (-0.2, 0.3), (0.2, 0.3), (-0.4, 0.4), (0.4, 0.4), (-1, 1.5), (1, 1.5), (-1.2, 3), (1.2, 3),
            (-1.3, 4.3), (1.3, 4.3), (-0.6, 4.3), (0.6, 4.3), (-0.6, 6), (0.6, 6), (-0.6, 7.8), (0.6, 7.8)]
    return np.array([(x0 + dx * s, y0 + dy * s) for dx, dy in rows])


def _lm(kp: np.ndarray) -> PersonLandmarks:
    b = float(np.ptp(kp[:, 1]) * 1.2)
    return PersonLandmarks(kp2d=kp.copy(), conf2d=np.full(17, 0.9), kp3d=np.zeros((17, 3)), conf3d=np.full(17, 0.9),
                           rois=np.array([[kp[:, 0].mean(), kp[:, 1].mean(), b]]), rois_ok=np.ones(1, bool),
                           blazepose2d=np.zeros((33, 2)), blazepose_vis=np.zeros(33), blazepose3d=np.zeros((33, 3)))


class Greedy:
    """Stands in for BlazePose: in any box it finds the front person (FRONT) unless that
    person's hips are greyed out, then the person behind (BACK); ``honours_mask=False``
    ignores the grey (it still finds FRONT)."""

    def __init__(self, front, back, honours_mask=True):
        self.front, self.back, self.honours_mask = front, back, honours_mask
        self.calls = []

    def __call__(self, image, box, mask=None):
        self.calls.append(mask is not None)
        if mask and self.honours_mask:
            import cv2

            img = np.array(image, copy=True)
            for q in mask:
                cv2.fillConvexPoly(img, np.round(q).astype(np.int32), (128, 128, 128))
            hip = np.round(self.front[11]).astype(int)
            if (img[hip[1], hip[0]] == 128).all():
                return _lm(self.back)
        return _lm(self.front)


FRONT, BACK = _body(300.0, 100.0, 240.0), _body(340.0, 80.0, 200.0)


def _boxes():
    def box(kp):
        return PersonBox(np.concatenate([kp.min(0) - 10, kp.max(0) + 10]), 0.9, "test")
    return [box(BACK), box(FRONT)]  # the person behind comes first: it must not keep the front body


def test_the_box_that_fits_keeps_the_body_and_the_other_finds_the_person_behind():
    image = np.zeros((480, 640, 3), np.uint8)
    lm = Greedy(FRONT, BACK)
    plain, _ = landmarks_for_persons(lm, image, _boxes(), separate=False)
    assert np.allclose(plain[0].kp2d, FRONT) and np.allclose(plain[1].kp2d, FRONT)  # one body, twice
    lms, problems = landmarks_for_persons(Greedy(FRONT, BACK), image, _boxes())
    assert problems == [None, None]
    assert np.allclose(lms[1].kp2d, FRONT) and lms[1].masked_person is None
    assert np.allclose(lms[0].kp2d, BACK) and lms[0].masked_person == 1
    assert lms[0].to_json()["masked_person"] == 1


def test_a_second_look_that_finds_the_same_body_again_changes_nothing():
    image = np.zeros((480, 640, 3), np.uint8)
    det = Greedy(FRONT, BACK, honours_mask=False)
    lms, _ = landmarks_for_persons(det, image, _boxes())
    assert det.calls == [False, False, True]  # one more look, in the person behind's box
    assert np.allclose(lms[0].kp2d, FRONT) and lms[0].masked_person is None


def test_separate_persons_are_left_alone():
    image = np.zeros((480, 640, 3), np.uint8)
    far = _body(40.0, 100.0)
    det = Greedy(FRONT, BACK)

    class Two:
        calls = 0

        def __call__(self, image, box, mask=None):
            Two.calls += 1
            return _lm(FRONT if box[0] > 200 else far)

    lms, _ = landmarks_for_persons(Two(), image, [PersonBox(np.array([20.0, 90, 80, 310]), 0.9, "t"), _boxes()[1]])
    assert Two.calls == 2 and all(lm.masked_person is None for lm in lms)
    assert det.calls == []


def test_limb_polygons_cover_each_limb_with_a_margin():
    kp = np.zeros((17, 2))
    conf = np.zeros(17)
    kp[5], kp[7] = (10.0, 10.0), (30.0, 10.0)  # left shoulder -> left elbow, horizontal
    conf[[5, 7]] = 1.0
    (q,) = limb_polygons(kp, conf, 2.0)
    assert sorted(map(tuple, np.round(q, 6))) == sorted([(8.0, 12.0), (32.0, 12.0), (32.0, 8.0), (8.0, 8.0)])
    conf[7] = 0.0
    assert limb_polygons(kp, conf, 2.0) == []


def test_the_landmarker_erases_the_mask_before_cropping():
    """Landmarker(mask=...) fills the polygons in from their surroundings in its own copy of
    the image: a bright person-sized patch on a dark green ground is gone from the crop, and
    no flat grey silhouette is left in its place."""
    seen = []

    class Detector:
        landmark_model = "full"

        def pose(self, crop):
            seen.append(crop.copy())
            return None

    from hmrcli.fit.landmarks import Landmarker

    image = np.zeros((300, 400, 3), np.uint8)
    image[..., 1] = 60
    image[100:201, 150:251] = 255
    box = np.array([100.0, 50.0, 300.0, 250.0])
    square = np.array([[150.0, 100.0], [250.0, 100.0], [250.0, 200.0], [150.0, 200.0]])
    lmk = Landmarker(num_rois=1, detector=Detector(), mirror=False)
    assert lmk(image, box) is None and (seen[0] == 255).all(axis=-1).sum() > 0.1 * 384 * 384
    assert lmk(image, box, mask=[square, square + 20.0]) is None
    crop = seen[1].astype(int)
    assert (crop.max(axis=-1) < 100).all()  # the patch is gone: everything is near the dark green ground
    assert np.abs(crop - [0, 60, 0]).max(axis=-1).mean() < 5
    assert not (crop == 128).all(axis=-1).any()
    assert (image[100:201, 150:251] == 255).all()  # the caller's image is untouched


def test_erase_regions_edges():
    from hmrcli.fit.landmarks import erase_regions

    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    square = np.array([[10.0, 10.0], [30.0, 10.0], [30.0, 30.0], [10.0, 30.0]])
    assert (erase_regions(image, []) == image).all()
    assert (erase_regions(image, [square + 500.0]) == image).all()  # wholly outside the image
    out = erase_regions(image, [square - 20.0])  # partly outside: only the part inside changes
    assert (out[12:, :] == image[12:, :]).all() and (out[:, 12:] == image[:, 12:]).all()
    assert not (out[:10, :10] == image[:10, :10]).all()
    # a large region is filled at a bounded resolution, and still only inside the polygons
    big = np.zeros((1200, 1000, 3), np.uint8)
    big[100:1100, 200:800] = 250
    rect = np.array([[200.0, 100.0], [799.0, 100.0], [799.0, 1099.0], [200.0, 1099.0]])
    out = erase_regions(big, [rect], max_side=64)
    assert out[300:900, 300:700].max() < 60 and (out[:90] == 0).all() and (out[:, :190] == 0).all()
