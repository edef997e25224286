"""Hand-computed checks of the benchmark metrics (mm, docs/method.md §7)."""

import numpy as np
import pytest
import torch

from hmrcli.bench import metrics as M


def _skel(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=0.3, size=(17, 3))


def _rot_z(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def test_identity_is_zero():
    j = np.stack([_skel(0), _skel(1)])
    p14 = M.lsp14_from_h36m(j)
    assert np.allclose(M.mpjpe(p14, p14), 0)
    assert np.allclose(M.pa_mpjpe(p14, p14), 0, atol=1e-9)
    assert M.mpjpe(p14, p14).shape == (2,)


def test_similarity_transform_known_mpjpe():
    gt = _skel(2)
    r = _rot_z(90)
    pred = 1.0 * gt @ r.T + np.array([0.5, -1.0, 2.0])  # rotate about z, translate
    g14, p14 = M.lsp14_from_h36m(gt[None]), M.lsp14_from_h36m(pred[None])
    # after pelvis centring only the rotation is left: |R x - x| = sqrt(2) |x_xy| for 90 deg about z
    expect = 1000 * np.mean(np.sqrt(2) * np.linalg.norm(g14[0, :, :2], axis=1))
    assert M.mpjpe(p14, g14)[0] == pytest.approx(expect, rel=1e-9)
    assert M.pa_mpjpe(p14, g14)[0] == pytest.approx(0, abs=1e-6)
    # scale + rotation + translation: PA still 0; pure translation: MPJPE 0
    pred2 = 1.7 * gt @ _rot_z(33).T + 3.0
    assert M.pa_mpjpe(M.lsp14_from_h36m(pred2[None]), g14)[0] == pytest.approx(0, abs=1e-6)
    pred3 = gt + np.array([1.0, 2.0, 3.0])
    assert M.mpjpe(M.lsp14_from_h36m(pred3[None]), g14)[0] == pytest.approx(0, abs=1e-9)
    # scaling about the pelvis by 2: MPJPE = mean distance of the joints from the pelvis
    pred4 = 2 * (gt - gt[0]) + gt[0]
    expect4 = 1000 * np.linalg.norm(g14[0], axis=1).mean()
    assert M.mpjpe(M.lsp14_from_h36m(pred4[None]), g14)[0] == pytest.approx(expect4, rel=1e-9)


def test_reflection_fix_hand_computed():
    # Non-symmetric points with a diagonal second-moment matrix diag(4a^2, 8, 4.5), a = 0.5.
    a = 0.5
    gt = np.array([[a, 2, 0], [a, -2, 0], [-a, 0, 1.5], [-a, 0, -1.5]])
    pred = gt * np.array([-1.0, 1.0, 1.0])  # mirrored in x
    # K = X1^T X2 = diag(-1, 8, 4.5): the best proper rotation is the identity, since flipping
    # the smallest singular direction (x) undoes the mirror; scale = trace(K') / |X1|^2.
    s = (-1 + 8 + 4.5) / (1 + 8 + 4.5)
    d_a = np.hypot((1 + s) * a, (1 - s) * 2)
    d_c = np.hypot((1 + s) * a, (1 - s) * 1.5)
    expect = 1000 * (d_a + d_c) / 2
    got = M.pa_mpjpe(pred[None], gt[None])[0]
    assert got == pytest.approx(expect, rel=1e-9)
    assert got > 100  # a reflection is not a similarity transform
    aligned = M.similarity_procrustes(pred[None], gt[None])[0]
    assert np.allclose(aligned, s * pred)  # R = I, t = 0 (both centred)


def test_batched_torch_and_mixed():
    g = np.stack([_skel(i) for i in range(4)])
    p = g.copy()
    p[1] = 1.3 * g[1] @ _rot_z(40).T
    p[2] = g[2] + np.random.default_rng(9).normal(scale=0.01, size=(17, 3))
    pa = M.pa_mpjpe(torch.tensor(M.lsp14_from_h36m(p)), torch.tensor(M.lsp14_from_h36m(g)))
    assert pa.shape == (4,)
    assert pa[0] == pytest.approx(0, abs=1e-6) and pa[1] == pytest.approx(0, abs=1e-6)
    assert pa[2] > 0 and pa[3] == pytest.approx(0, abs=1e-6)


def test_pve_pelvis_centred():
    v = np.random.default_rng(1).normal(size=(2, 50, 3))
    assert np.allclose(M.pve(v + 1.0, v, np.ones((2, 3)), np.zeros((2, 3))), 0)
    # an offset of 0.01 m on every vertex, pelvis not moved: PVE = 10 mm
    assert np.allclose(M.pve(v + [0.01, 0, 0], v, np.zeros((2, 3)), np.zeros((2, 3))), 10)


def test_mirrored_skeleton_is_not_aligned_away():
    g = M.lsp14_from_h36m(_skel(4)[None])
    mirrored = g * np.array([-1.0, 1.0, 1.0])
    pa = M.pa_mpjpe(mirrored, g)[0]
    assert pa > 1.0
    # no proper rotation (+ best scale/translation) does better than the returned alignment
    best = ((M.similarity_procrustes(mirrored, g)[0] - g[0]) ** 2).sum()
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        r = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        p = mirrored[0] - mirrored[0].mean(0)
        rp = p @ r.T
        t = g[0] - g[0].mean(0)
        s = max((rp * t).sum() / (rp ** 2).sum(), 0)
        # Procrustes minimises the sum of squared distances
        assert ((s * rp - t) ** 2).sum() >= best - 1e-12
