"""A person's fit does not depend on the batch it is fitted in (issue 19, item 7).

Resuming a run after ``kill -9`` fits the unfinished images in other batches than the
interrupted run did, so the fitting engine's outputs must not depend on which persons
share a batch. They are compared bit for bit (``np.array_equal``, no tolerance): the
same image fitted alone and inside larger batches, in another order and split into other
batches. Before the fit was made person by person, a batched fit of 40 persons differed
from the single fits by up to 5e-3 in the rotation matrices and 2e-5 m in the translation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hmrcli.bench.fit_synthetic import synthetic_people
from hmrcli.body import load_body_model
from hmrcli.engine.base import PersonBox, Prepared
from hmrcli.engine.fit import FitEngine
from hmrcli.fit.landmarks import PersonLandmarks

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"

#: everything a PersonEstimate carries that the pipeline writes (params, camera, meshes)
ARRAYS = ("rotmats", "betas", "cam_t", "cams_local", "vertices_model", "joints_model", "K")


class _GivenLandmarks:
    """Stands in for the BlazePose landmarker: the landmarks are given (``Prepared``)."""

    num_rois = 1
    landmark_model = "synthetic"

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def body():
    return load_body_model("free")


def _synthetic_images(body, persons_per_image=(1, 2, 1, 2, 1, 1, 2, 1), seed=3):
    """Prepared items of 8 synthetic 1920x1080 images (12 persons), landmarks = the synthetic
    bodies' noisy keypoints with varied confidences."""
    n = sum(persons_per_image)
    rng = np.random.default_rng(seed)
    ppl = synthetic_people(body, n, rng)
    t = ppl.targets
    w, h = ppl.image_wh
    f = float(ppl.K[0, 0])
    conf = rng.uniform(0.4, 1.0, size=(n, 17))
    conf[rng.uniform(size=(n, 17)) < 0.1] = 0.0  # a few landmarks unusable
    items, k = [], 0
    for m in persons_per_image:
        lms, boxes = [], []
        for _ in range(m):
            kp = t.kp2d[k]
            roi = np.array([[*(0.5 * (kp.min(0) + kp.max(0))), t.box_size[k]]])
            lms.append(PersonLandmarks(kp2d=kp, conf2d=conf[k], kp3d=t.kp3d[k], conf3d=conf[k].copy(), rois=roi,
                                       rois_ok=np.ones(1, bool), blazepose2d=np.zeros((33, 2)),
                                       blazepose_vis=np.zeros(33), blazepose3d=np.zeros((33, 3))))
            boxes.append(PersonBox(np.concatenate([roi[0, :2] - roi[0, 2] / 2, roi[0, :2] + roi[0, 2] / 2])))
            k += 1
        items.append((Prepared(image_wh=(w, h), focal=f, principal=(w / 2.0, h / 2.0), problems=[""] * m,
                               landmarks=lms), boxes))
    return items


def _assert_same(a, b, what):
    assert (a is None) == (b is None), what
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert np.array_equal(x, y), (what, name, float(np.abs(np.asarray(x) - np.asarray(y)).max()))
    assert a.extra["fit"] == b.extra["fit"], what


def test_synthetic_person_alone_equals_person_in_any_batch(body):
    """8 images, 12 persons: every image fitted alone == the same image in one batch of all
    12 persons == in batches of 5 persons, images in reverse order."""
    items = _synthetic_images(body)
    together = FitEngine(body, landmarker=_GivenLandmarks(), batch_size=40).run(items)
    small = FitEngine(body, landmarker=_GivenLandmarks(), batch_size=5).run(items[::-1])[::-1]
    single = FitEngine(body, landmarker=_GivenLandmarks(), batch_size=40)
    for i in (0, 3, 7):  # first, middle (two persons), last
        alone = single.run([items[i]])[0]
        for j, est in enumerate(alone):
            assert est is not None
            _assert_same(est, together[i][j], f"image {i} person {j}: alone vs in the batch of 12")
    for i, ests in enumerate(together):
        for j, est in enumerate(ests):
            _assert_same(est, small[i][j], f"image {i} person {j}: batch of 12 vs batches of 5, reversed")
    # and the fits are fits (not e.g. all the same start value)
    assert all(est.extra["fit"]["reproj_box"] < 0.05 for ests in together for est in ests)


@pytest.mark.fit
def test_sample_photos_alone_equal_together(body):
    """Real photos with the default detector and BlazePose (5 RoIs): each image alone == all
    images together (two_people_park: its two persons, also each on its own)."""
    from hmrcli.detect import DetectorUnavailable, default_detector
    from hmrcli.detect.mediapipe_backend import mediapipe_problem
    from hmrcli.fit.landmarks import Landmarker
    from hmrcli.sources import read_image

    if mediapipe_problem() is not None:
        pytest.skip(f"BlazePose unavailable: {mediapipe_problem()}")
    try:
        det = default_detector()
    except DetectorUnavailable as e:
        pytest.skip(f"no detector: {e}")
    engine = FitEngine(body, landmarker=Landmarker(num_rois=5), batch_size=16)
    try:
        items = []
        for name in ("two_people_park.jpg", "cameraman.png", "person_dog_horse.jpg"):
            img = read_image(SAMPLES / name)
            persons = [PersonBox(d.box_xyxy, d.score, "detector") for d in det.detect([img])[0]]
            items.append((engine.prepare(img, persons), persons))
        assert sum(lm is not None for p, _ in items for lm in p.landmarks) >= 3
        together = engine.run(items)
        for i, item in enumerate(items):
            for j, est in enumerate(engine.run([item])[0]):
                _assert_same(est, together[i][j], f"image {i} person {j}: alone vs together")
        prep, persons = items[0]
        for j in range(len(persons)):  # one person of the image alone
            one = Prepared(image_wh=prep.image_wh, focal=prep.focal, principal=prep.principal,
                           problems=[prep.problems[j]], landmarks=[prep.landmarks[j]])
            _assert_same(engine.run([(one, [persons[j]])])[0][0], together[0][j], f"person {j} of image 0 alone")
    finally:
        engine.close()
        if hasattr(det, "close"):
            det.close()
