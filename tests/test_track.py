"""Tracking and smoothing (hmrcli.track) on the synthetic walking pair's ground truth with
noise added: identities through a crossing with an occlusion, re-identification limits,
One-Euro on quaternions, the windowed fit with an acceleration penalty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmrcli import geometry as G
from hmrcli.bench.sequence import accel_error, sequence_metrics, walking_pair
from hmrcli.body import load_body_model
from hmrcli.fit.optimize import KeypointBody
from hmrcli.track import (
    Observation,
    OneEuroParams,
    SmoothOptions,
    TrackerOptions,
    lag_note,
    one_euro_filter,
    smooth_track,
    track_people,
)
from hmrcli.track.smooth import continuous_quaternions


@pytest.fixture(scope="module")
def body():
    return load_body_model("free")


@pytest.fixture(scope="module")
def kb(body):
    return KeypointBody(body, dtype=torch.float64)


@pytest.fixture(scope="module")
def pair(body):
    return walking_pair(body, n_frames=40, seed=3)


def noisy_observations(pair, kb, rng, hide=(), rot_noise=0.06, transl_noise=0.03):
    """Per frame, the persons of ``pair`` as observations with noise on every joint rotation
    (radians) and on the translation (metres), persons listed in random order; ``hide``:
    (person, frame) pairs left out (an occlusion)."""
    P, T = pair.joints.shape[:2]
    frames = []
    for k in range(T):
        obs = []
        for p in rng.permutation(P):
            if (int(p), k) in hide:
                continue
            noise = G.axis_angle_to_rotmat(rng.normal(scale=rot_noise, size=(24, 3)))
            rot = pair.rotmats[p, k] @ noise
            tr = pair.transl[p, k] + rng.normal(scale=transl_noise, size=3)
            _, j = kb(torch.as_tensor(rot[None]), torch.as_tensor(pair.betas[p][None]))
            jc = j[0].numpy() + tr
            uv = jc @ pair.K.T
            uv = uv[:, :2] / uv[:, 2:]
            box = np.concatenate([uv.min(0) - 20, uv.max(0) + 20])
            obs.append(Observation(step=k, frame=k, person=len(obs), box_xyxy=box, joints_2d=uv, joints_cam=jc,
                                   rotmats=rot, betas=pair.betas[p], betas_applied=True, transl=tr, K=pair.K))
        frames.append(obs)
    return frames


def test_two_people_crossing_keep_their_ids_through_an_occlusion(pair, kb):
    rng = np.random.default_rng(0)
    hide = {(1, k) for k in range(18, 23)}  # the one behind is hidden for 5 frames while they cross
    frames = noisy_observations(pair, kb, rng, hide)
    tracks = track_people(frames, TrackerOptions(max_gap=10))
    assert [t.track_id for t in tracks] == ["track_00", "track_01"]
    assert sum(len(t.observations) for t in tracks) == 2 * 40 - 5
    got = {t.track_id: (t.frames, np.stack([o.joints_cam for o in t.observations])) for t in tracks}
    m = sequence_metrics(pair, got)
    assert m["identity_switches"] == 0 and m["matched_person_frames"] == 75
    gaps = {t.track_id: t.gaps() for t in tracks}
    assert sorted(gaps.values()) == [[], [(18, 5)]]


def test_a_gap_longer_than_max_gap_starts_a_new_track(pair, kb):
    rng = np.random.default_rng(1)
    hide = {(1, k) for k in range(18, 23)}
    tracks = track_people(noisy_observations(pair, kb, rng, hide), TrackerOptions(max_gap=3))
    assert len(tracks) == 3
    assert sorted(len(t.observations) for t in tracks) == [17, 18, 40]


def _spurious(o: Observation, step: int, person: int, shift_px: float = 0.0, depth: float = 1.0) -> Observation:
    """A copy of ``o`` at ``step`` (another frame's detection, a mixed estimate): moved
    ``shift_px`` pixels right and ``depth`` times as far."""
    return Observation(step=step, frame=step, person=person, box_xyxy=o.box_xyxy + [shift_px, 0, shift_px, 0],
                       joints_2d=o.joints_2d + [shift_px, 0], joints_cam=o.joints_cam * depth, rotmats=o.rotmats,
                       betas=o.betas, betas_applied=True, transl=o.transl * depth, K=o.K)


def test_a_track_shorter_than_min_frames_is_set_aside(pair, kb):
    frames = noisy_observations(pair, kb, np.random.default_rng(2))
    # a one-frame estimate at frame 0, listed first (it would have been track_00), and a
    # two-frame one at frames 30-31, both far from the two walkers (another place, 3x as far)
    for k, shift in ((0, 400.0), (30, -500.0), (31, -500.0)):
        for o in frames[k]:
            o.person += 1
        frames[k].insert(0, _spurious(frames[k][0], k, 0, shift, depth=3.0))
    short: list = []
    tracks = track_people(frames, TrackerOptions(), short=short)
    assert [t.track_id for t in tracks] == ["track_00", "track_01"]
    assert sorted(len(t.observations) for t in tracks) == [40, 40]
    assert sorted([o.frame for o in obs] for obs in short) == [[0], [30, 31]]
    assert all(o.person == 0 for obs in short for o in obs)
    every = track_people(frames, TrackerOptions(min_frames=1))
    assert [t.track_id for t in every] == ["track_00", "track_01", "track_02", "track_03"]
    assert [len(t.observations) for t in every] == [1, 40, 40, 2]
    with pytest.raises(ValueError, match="min_frames"):
        TrackerOptions(min_frames=0)


def test_a_tentative_track_cannot_take_a_confirmed_persons_detection(pair, kb):
    frames = noisy_observations(pair, kb, np.random.default_rng(4))
    who = lambda k, p: min(frames[k], key=lambda o: np.abs(o.joints_cam - pair.joints[p, k]).mean())
    # frame 7's estimate of person 1 lands 60 px off (a mixed estimate in a crossing), and at
    # frame 6 a stray estimate lies exactly there: the tentative track it starts is nearer to
    # person 1's detection of frame 7 than person 1's own track is
    d7 = who(7, 1)
    d7.box_xyxy, d7.joints_2d = d7.box_xyxy + [60.0, 0, 60.0, 0], d7.joints_2d + [60.0, 0]
    frames[6].append(_spurious(d7, 6, 2))
    short: list = []
    tracks = track_people(frames, TrackerOptions(), short=short)
    got = {t.track_id: (t.frames, np.stack([o.joints_cam for o in t.observations])) for t in tracks}
    m = sequence_metrics(pair, got)
    assert len(tracks) == 2 and m["identity_switches"] == 0 and m["matched_person_frames"] == 80
    assert [[(o.frame, o.person) for o in obs] for obs in short] == [[(6, 2)]]


def test_tracks_do_not_depend_on_the_order_of_persons(pair, kb):
    a = track_people(noisy_observations(pair, kb, np.random.default_rng(5)))
    frames = noisy_observations(pair, kb, np.random.default_rng(5))
    for obs in frames:  # same observations, listed the other way round, indices renumbered
        for i, o in enumerate(reversed(obs)):
            o.person = i
    b = track_people([list(reversed(f)) for f in frames])
    # the same grouping (ids follow the first frame's person indices, which were renumbered)
    key = lambda tracks: sorted(tuple(np.round(np.concatenate([o.transl for o in t.observations]), 12)) for t in tracks)
    assert len(a) == len(b) == 2 and key(a) == key(b)


def test_quaternions_stay_on_one_hemisphere_across_the_180_degree_wrap():
    # an upright body facing the camera is a 180-degree rotation: axis-angle flips sign there
    angles = np.pi + np.linspace(-0.2, 0.2, 21)
    R = G.axis_rotation(0, angles)[:, None]
    q = continuous_quaternions(R)
    assert np.all(np.sum(q[1:] * q[:-1], axis=-1) > 0.99)
    aa = G.rotmat_to_axis_angle(R[:, 0])
    assert np.abs(np.diff(aa[:, 0])).max() > 6  # raw axis-angle jumps by ~2 pi: never filter it


def test_one_euro_is_causal_and_follows_a_step_with_the_stated_lag():
    t = np.arange(60) / 30.0
    x = np.zeros((60, 1, 3))
    x[30:] = 1.0
    y = one_euro_filter(x, t, OneEuroParams(min_cutoff=1.0, beta=0.0))
    assert np.all(y[:30] == 0)  # nothing before the step: causal
    tau = 1 / (2 * np.pi * 1.0)
    # a first-order low-pass: after tau seconds about 1 - 1/e of the step
    k = 30 + int(round(tau * 30))
    assert 0.5 < y[k, 0, 0] < 0.75
    note = lag_note(SmoothOptions(method="one-euro", rotation=OneEuroParams(1.0, 0.0),
                                  translation=OneEuroParams(2.0, 0.0)), 30.0)
    assert note["causal"] and note["lag_s"] == pytest.approx(tau, abs=1e-4)
    assert lag_note(SmoothOptions(method="fit-window"), 30.0)["causal"] is False


def _track_errors(pair, sm_or_obs, p, frames):
    j = sm_or_obs
    g = pair.joints[p, frames]
    al_p, al_g = j - j[:, :1], g - g[:, :1]
    return (1000 * np.linalg.norm(al_p - al_g, axis=-1).mean(), 1000 * accel_error(al_p, al_g, frames).mean(),
            1000 * accel_error(j, g, frames).mean())


@pytest.mark.parametrize("method", ["one-euro", "fit-window"])
def test_smoothing_cuts_the_jitter_without_losing_accuracy(pair, kb, method):
    rng = np.random.default_rng(2)
    frames = noisy_observations(pair, kb, rng)
    tracks = track_people(frames)
    assert len(tracks) == 2
    for tr in tracks if method == "one-euro" else tracks[:1]:  # (the windowed fit takes ~10 s a track)
        p = int(np.argmin([np.linalg.norm(tr.observations[0].joints_cam[0] - pair.joints[q, 0, 0]) for q in (0, 1)]))
        raw = np.stack([o.joints_cam for o in tr.observations])
        sm = smooth_track(tr, kb, 30.0, SmoothOptions(method=method))
        assert sm.rotmats.shape == (40, 24, 3, 3) and np.allclose(np.linalg.det(sm.rotmats), 1.0)
        assert np.array_equal(sm.frames, tr.frames) and sm.betas.shape == (10,)
        m0, a0, c0 = _track_errors(pair, raw, p, tr.frames)
        m1, a1, c1 = _track_errors(pair, sm.joints, p, tr.frames)
        assert a1 < 0.5 * a0 and c1 < 0.5 * c0, (method, a0, a1, c0, c1)
        assert m1 < 1.05 * m0, (method, m0, m1)


def test_none_keeps_the_per_frame_poses_with_one_shape(pair, kb):
    frames = noisy_observations(pair, kb, np.random.default_rng(4))
    tr = track_people(frames)[0]
    sm = smooth_track(tr, kb, 30.0, SmoothOptions(method="none"))
    assert np.allclose(sm.rotmats, np.stack([o.rotmats for o in tr.observations]))
    # the pelvis stays where each frame's estimate put it
    assert np.allclose(sm.joints[:, 0], np.stack([o.joints_cam[0] for o in tr.observations]), atol=1e-9)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="unknown smoothing"):
        SmoothOptions(method="kalman")
    with pytest.raises(ValueError, match="max_gap"):
        TrackerOptions(max_gap=-1)


def test_a_second_estimate_of_one_body_is_dropped(pair, kb):
    """An engine asked for the person in a box may find the neighbour instead: two estimates
    of one body in a frame; the one whose joints lie outside its own box goes."""
    from hmrcli.track.tracker import drop_duplicates

    frames = noisy_observations(pair, kb, np.random.default_rng(6))
    a, b = frames[10]
    right = Observation(**{**a.__dict__, "det_box_xyxy": a.box_xyxy})
    wrong = Observation(**{**a.__dict__, "person": 7, "joints_2d": a.joints_2d + 1.0, "det_box_xyxy": b.box_xyxy})
    kept, dropped = drop_duplicates([wrong, b, right], TrackerOptions())
    assert [o.person for o in kept] == sorted([b.person, a.person]) and dropped == [(wrong, right)]
    assert right.in_box == 1.0 and wrong.in_box < 0.2
    frames[10] = [wrong, b, right]
    got = []
    tracks = track_people(frames, TrackerOptions(), got)
    assert len(tracks) == 2 and got == [(wrong, right)]
