"""RoI fusion of BlazePose landmark sets: accurate landmarks are kept (position and confidence)
when other RoIs cut the limb off; a RoI that found someone else is dropped."""

import numpy as np

from hmrcli.fit.landmarks import fuse_landmark_sets


def _sets(rng, truth, r=5, noise=2.0):
    lm = truth[None] + rng.normal(0, noise, (r, len(truth), 2))
    return lm, np.full((r, len(truth)), 0.95), np.zeros((r, len(truth), 3))


def test_landmark_outside_other_crops_keeps_its_confidence():
    rng = np.random.default_rng(0)
    truth = rng.uniform(100, 300, (33, 2))
    lm, vis, w3 = _sets(rng, truth)
    wrist = 15
    # RoI 0 sees the wrist (visibility 0.6, 3 px off); RoIs 1-4 cut it off and guess it 60-90 px
    # away with low visibility, as BlazePose does for limbs outside its crop
    lm[0, wrist] = truth[wrist] + [3.0, 0.0]
    vis[0, wrist] = 0.6
    lm[1:, wrist] = truth[wrist] + rng.uniform(60, 90, (4, 2))
    vis[1:, wrist] = 0.15
    inside = np.ones(vis.shape, bool)
    inside[1:, wrist] = False
    f2, fv, _, keep = fuse_landmark_sets(lm, vis, w3, box_size=250.0, in_crop=inside)
    assert keep.all()
    assert np.linalg.norm(f2[wrist] - truth[wrist]) < 5.0
    assert fv[wrist] >= 0.55  # not averaged down by the RoIs that did not see it (was 0.24)
    assert vis[:, wrist].mean() < 0.3  # what the mean over all RoIs gave: below min_visibility, zeroed


def test_roi_that_found_someone_else_is_dropped():
    rng = np.random.default_rng(1)
    truth = rng.uniform(100, 300, (33, 2))
    lm, vis, w3 = _sets(rng, truth)
    lm[2] = lm[2] + 150.0  # another person
    f2, fv, _, keep = fuse_landmark_sets(lm, vis, w3, box_size=250.0)
    assert keep.tolist() == [True, True, False, True, True]
    assert np.abs(f2 - truth).max() < 8.0 and (fv > 0.9).all()
