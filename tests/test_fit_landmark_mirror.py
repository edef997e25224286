"""Mirrored views of the landmark stage: every RoI's crop also goes to BlazePose flipped
left-right, and the result is mapped back (x mirrored in the crop, left <-> right landmarks
swapped, world x negated) before the fusion.

The stand-in for BlazePose is exactly mirror-equivariant, as a perfect landmark model would be:
it sees a person facing the camera as two bright blobs (the hands), names the one further right
in the image the person's left, and reads each hand's depth from its brightness. Its mirrored
views must then, once mapped back, agree with the plain views to rounding; any error in the
mapping (the x formula, the swap, the sign of world x) would move them apart by pixels."""

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from hmrcli.detect.mediapipe_backend import BlazePoseResult  # noqa: E402
from hmrcli.engine.base import PersonBox  # noqa: E402
from hmrcli.engine.quality import fit_quality  # noqa: E402
from hmrcli.fit.landmarks import BLAZEPOSE_MIRROR, BLAZEPOSE_NAMES, Landmarker  # noqa: E402

LEFT = [i for i, n in enumerate(BLAZEPOSE_NAMES) if n.startswith("left") or n == "mouth_left"]
RIGHT = [i for i, n in enumerate(BLAZEPOSE_NAMES) if n.startswith("right") or n == "mouth_right"]


class Hands:
    """Mirror-equivariant stand-in for BlazePose (module docstring); coordinates in BlazePose's
    convention: normalised x times the width, 0 at the crop's left edge."""

    landmark_model = "full"

    def __init__(self):
        self.calls = 0

    def pose(self, crop):
        self.calls += 1
        s = crop.shape[1]
        grey = crop[..., 0].astype(np.float64)
        n, lab = cv2.connectedComponents((grey > 100).astype(np.uint8))
        blobs = []
        for k in range(1, n):
            ys, xs = np.nonzero(lab == k)
            blobs.append((xs.mean() + 0.5, ys.mean() + 0.5, grey[ys, xs].mean()))
        if len(blobs) != 2:
            return None
        right_hand, left_hand = sorted(blobs)  # the person faces the camera: their left is image right
        lm = np.zeros((33, 2))
        world = np.zeros((33, 3))
        for idx, (x, y, v) in ((LEFT, left_hand), (RIGHT, right_hand)):
            lm[idx] = (x, y)
            world[idx] = ((x - s / 2) / s, (y - s / 2) / s, 0.1 if v > 230 else -0.1)
        lm[0] = 0.5 * (np.array(left_hand[:2]) + np.array(right_hand[:2]))
        world[0] = 0.5 * (world[LEFT[0]] + world[RIGHT[0]])
        return BlazePoseResult(lm, np.full(33, 0.95), world, 0.9, lm[0].copy(), np.zeros(4))

    def close(self):
        pass


def _image():
    img = np.zeros((300, 400, 3), dtype=np.uint8)
    img[140:156, 140:156] = 200  # the person's right hand (image left), 0.1 m nearer
    img[146:166, 240:260] = 255  # the person's left hand
    return img


def test_mirror_table_swaps_left_and_right():
    assert all(BLAZEPOSE_MIRROR[BLAZEPOSE_MIRROR[i]] == i for i in range(33))
    for i, j in enumerate(BLAZEPOSE_MIRROR):
        a, b = BLAZEPOSE_NAMES[i], BLAZEPOSE_NAMES[j]
        assert a.replace("left", "X").replace("right", "left").replace("X", "right") == b
    assert BLAZEPOSE_MIRROR[0] == 0 and BLAZEPOSE_NAMES[BLAZEPOSE_MIRROR[15]] == "right_wrist"


def test_mirrored_views_map_back_onto_the_plain_views():
    box = np.array([100.0, 60.0, 300.0, 250.0])
    plain_det, mirror_det = Hands(), Hands()
    plain = Landmarker(num_rois=5, detector=plain_det, mirror=False)(_image(), box)
    both = Landmarker(num_rois=5, detector=mirror_det, mirror=True)(_image(), box)
    assert plain_det.calls == 5 and mirror_det.calls == 10
    assert plain.num_views == 5 and both.num_views == 10 and both.views_used == 10
    assert both.view_mirrored.tolist() == [False] * 5 + [True] * 5 and both.view_roi.tolist() == [0, 1, 2, 3, 4] * 2
    assert both.rois.shape == (5, 3) and both.rois_ok.all()
    # each RoI's mirrored view, mapped back, is its plain view (2D pixels, 3D metres)
    np.testing.assert_allclose(both.roi_kp2d[5:], both.roi_kp2d[:5], atol=1e-6)
    np.testing.assert_allclose(both.roi_kp3d[5:], both.roi_kp3d[:5], atol=1e-9)
    np.testing.assert_allclose(both.kp2d, plain.kp2d, atol=1e-6)
    np.testing.assert_allclose(both.kp3d, plain.kp3d, atol=1e-9)
    # and the hands are where they were drawn: COCO 9 = left wrist (image right), 10 = right wrist
    assert abs(both.kp2d[9, 0] - 250.0) < 1.0 and abs(both.kp2d[10, 0] - 148.0) < 1.0
    assert both.kp3d[9, 2] == pytest.approx(0.1) and both.kp3d[10, 2] == pytest.approx(-0.1)
    js = both.to_json()
    assert (js["views"], js["views_used"], js["rois"], js["mirrored_views"]) == (10, 10, 5, True)


def test_a_model_that_is_not_mirror_equivariant_shows_in_the_spread():
    """A landmark model that names the hands by brightness, not by side: in the mirrored crops
    it calls the person's right hand their left, so the mirrored views, mapped back, put each
    wrist on the other hand. The wrists' 2D spread over the 10 views is then half the distance
    between the hands (5 views on each), where the 5 plain views alone agree to a pixel."""

    class ByBrightness(Hands):
        def pose(self, crop):
            res = super().pose(crop)
            if res is not None and self.calls > 5:  # the mirrored views come after the plain ones
                res.landmarks[LEFT], res.landmarks[RIGHT] = res.landmarks[RIGHT].copy(), res.landmarks[LEFT].copy()
            return res

    box = np.array([100.0, 60.0, 300.0, 250.0])
    person = PersonBox(box, None, "test")
    lm = Landmarker(num_rois=5, detector=ByBrightness(), mirror=True)(_image(), box)
    plain = Landmarker(num_rois=5, detector=Hands(), mirror=False)(_image(), box)
    hands = np.hypot(250.0 - 148.0, 156.0 - 148.0)
    assert np.linalg.norm(lm.roi_kp2d[5:, 9] - lm.roi_kp2d[:5, 10], axis=1).max() < 1.0  # swapped

    class Est:  # the fields fit_quality reads
        cam_t = np.array([0.0, 0.0, 5.0])
        K = np.array([[500.0, 0, 200], [0, 500.0, 150], [0, 0, 1]])
        joints_model = np.zeros((24, 3))
        rotmats = np.tile(np.eye(3), (24, 1, 1))
        box = person
        image_wh = (400, 300)

    kp = np.zeros((17, 3))
    q_mirror, q_plain = fit_quality(Est(), lm, kp), fit_quality(Est(), plain, kp)
    assert q_plain["landmark_spread_px"]["per_joint"][9] < 1.0
    assert q_mirror["landmark_spread_px"]["per_joint"][9] == pytest.approx(hands / 2, abs=1.0)
    assert (q_mirror["views"], q_plain["views"], q_mirror["rois"]) == (10, 5, 5)
