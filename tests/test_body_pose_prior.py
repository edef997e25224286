"""The learned GMM pose prior (hmrcli.body.pose_prior) and its shipped file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hmrcli import assets
from hmrcli.body import JOINT_NAMES
from hmrcli.body.pose_limits import POSE_MEAN
from hmrcli.body.pose_prior import DEFAULT_POSE_PRIOR_FILE, GMMPosePrior


@pytest.fixture(scope="module")
def prior() -> GMMPosePrior:
    return GMMPosePrior.load()


def _numpy_terms(p: GMMPosePrior, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent numpy reference from the stored covariances (not the Cholesky factors):
    squared Mahalanobis distances (B, K) and max-mixture costs (B, K)."""
    d = x.shape[1]
    m2 = np.empty((x.shape[0], p.n_components))
    cost = np.empty_like(m2)
    for k in range(p.n_components):
        diff = x - p.means[k]
        sol = np.linalg.solve(p.covariances[k], diff.T).T
        m2[:, k] = (diff * sol).sum(1)
        _, logdet = np.linalg.slogdet(p.covariances[k])
        cost[:, k] = 0.5 * m2[:, k] - math.log(p.weights[k]) + 0.5 * logdet + 0.5 * d * math.log(2 * math.pi)
    return m2, cost


def _implausible_poses() -> dict[str, np.ndarray]:
    knees = POSE_MEAN.copy()
    knees[4 - 1, 0] = knees[5 - 1, 0] = -math.pi / 2          # both knees bent backwards 90 degrees
    arm = POSE_MEAN.copy()
    arm[16 - 1] = (0.0, 0.0, -2.8)                             # left upper arm swung down through the torso
    twist = POSE_MEAN.copy()
    twist[16 - 1] = (math.pi * 0.95, 0.0, 0.0)                 # left upper arm twisted ~170 deg about its axis
    elbow = POSE_MEAN.copy()
    elbow[18 - 1] = (0.0, 1.4, 0.0)                            # left elbow bent backwards 80 degrees
    return {"knees_backwards": knees, "arm_through_torso": arm, "arm_twisted": twist, "elbow_backwards": elbow}


# ----------------------------------------------------------------------------- the file
def test_shipped_file_shapes_and_metadata(prior):
    path = assets.asset_path(DEFAULT_POSE_PRIOR_FILE)
    assert prior.path == path
    assert path.stat().st_size < 5_000_000
    k, d = prior.n_components, prior.dim
    assert (k, d) == (8, 69)
    assert prior.means.shape == (8, 69)
    assert prior.covariances.shape == prior.precisions_chol.shape == (8, 69, 69)
    assert prior.weights.shape == (8,)
    assert prior.weights.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(prior.weights > 0)
    assert np.allclose(prior.precisions_chol, np.tril(prior.precisions_chol))
    # the Cholesky factors are those of the covariances' inverses
    prec = prior.precisions_chol @ np.swapaxes(prior.precisions_chol, 1, 2)
    assert np.allclose(prec @ prior.covariances, np.eye(69), atol=1e-6)
    assert np.allclose(prior.covariances, np.swapaxes(prior.covariances, 1, 2))
    assert prior.joint_names == tuple(JOINT_NAMES[1:])
    meta = prior.metadata
    assert meta["body_model"]["name"] == "free"
    assert meta["n_frames"] >= 10_000
    assert meta["n_components"] == 8
    assert "CMU" in meta["source"]["original"]
    assert meta["source"]["commit"] and len(meta["source"]["files"]) >= 50
    # hand joints carry no data: mean 0 and no correlation with the rest
    hand = [3 * (j - 1) + c for j in (22, 23) for c in range(3)]
    rest = [i for i in range(69) if i not in hand]
    assert np.allclose(prior.means[:, hand], 0.0)
    assert np.allclose(prior.covariances[:, hand][:, :, rest], 0.0)


def test_file_loads_without_pickle(tmp_path):
    """The file is plain arrays: np.load with allow_pickle=False reads every member."""
    with np.load(assets.asset_path(DEFAULT_POSE_PRIOR_FILE), allow_pickle=False) as z:
        for key in z.files:
            assert z[key].dtype != object
        json.loads(str(z["metadata"].item()))


def test_load_rejects_other_npz(tmp_path):
    f = tmp_path / "other.npz"
    np.savez(f, means=np.zeros((2, 69)))
    with pytest.raises(ValueError, match="not a GMM pose prior"):
        GMMPosePrior.load(f)


# ----------------------------------------------------------------------------- plausibility
def test_nll_prefers_mocap_like_poses(prior):
    plausible = {
        "relaxed_standing": POSE_MEAN,
        "rest_t_pose": np.zeros((23, 3)),
        **{f"component_{k}_mean": prior.means[k].reshape(23, 3) for k in range(prior.n_components)},
    }
    bad = _implausible_poses()
    nll_good = {n: float(prior.nll(torch.as_tensor(p, dtype=torch.float64))) for n, p in plausible.items()}
    nll_bad = {n: float(prior.nll(torch.as_tensor(p, dtype=torch.float64))) for n, p in bad.items()}
    # each implausible pose costs far more than the relaxed standing pose it is derived from
    # (a likelihood ratio of at least e^15)
    for n, v in nll_bad.items():
        assert v > nll_good["relaxed_standing"] + 15.0, (n, v, nll_good["relaxed_standing"])
    # the two gross cases by a wide margin
    assert nll_bad["knees_backwards"] > nll_good["relaxed_standing"] + 30.0
    assert nll_bad["arm_through_torso"] > nll_good["relaxed_standing"] + 30.0
    # and more than every plausible pose
    assert min(nll_bad.values()) > max(nll_good.values()), (nll_bad, nll_good)


def test_nll_increases_with_knee_hyperextension(prior):
    x = np.repeat(POSE_MEAN[None], 5, axis=0)
    for i, a in enumerate(np.linspace(0.0, -1.6, 5)):
        x[i, 3, 0] = x[i, 4, 0] = a
    nll = prior.nll(torch.as_tensor(x)).numpy()
    assert np.all(np.diff(nll) > 0), nll


def test_walking_like_knee_flexion_is_cheap(prior):
    """Flexing the knees forward (the anatomical direction) is cheap; the same angle backwards is not."""
    fwd, back = POSE_MEAN.copy(), POSE_MEAN.copy()
    fwd[3, 0] = fwd[4, 0] = 0.6
    back[3, 0] = back[4, 0] = -0.6
    n = prior.nll(torch.as_tensor(np.stack([fwd, back])))
    assert float(n[1] - n[0]) > 5.0


# ----------------------------------------------------------------------------- exactness
def test_nll_and_residuals_match_numpy_reference(prior):
    rng = np.random.default_rng(0)
    comp = rng.integers(0, prior.n_components, size=64)
    x = prior.means[comp] + rng.normal(scale=0.15, size=(64, 69))
    x = np.concatenate([x, np.stack(list(_implausible_poses().values())).reshape(-1, 69)])
    m2, cost = _numpy_terms(prior, x)
    best = cost.argmin(1)
    xt = torch.as_tensor(x)
    r = prior.residuals(xt).numpy()
    assert r.shape == x.shape
    np.testing.assert_allclose(0.5 * (r ** 2).sum(1), 0.5 * m2[np.arange(len(x)), best], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(prior.nll(xt).numpy(), cost.min(1), rtol=1e-9, atol=1e-8)
    np.testing.assert_array_equal(prior.component(xt).numpy(), best)
    np.testing.assert_allclose(prior.mahalanobis_sq(xt).numpy(), m2, rtol=1e-8, atol=1e-8)
    # the residual is L^T (x - mu) of the chosen component
    k0 = best[0]
    np.testing.assert_allclose(r[0], prior.precisions_chol[k0].T @ (x[0] - prior.means[k0]), atol=1e-10)


def test_shapes_dtypes_and_unbatched_inputs(prior):
    x64 = torch.as_tensor(prior.means[:3] + 0.05)
    for dtype in (torch.float32, torch.float64):
        x = x64.to(dtype)
        assert prior.nll(x).dtype == dtype and prior.nll(x).shape == (3,)
        assert prior.residuals(x).dtype == dtype and prior.residuals(x).shape == (3, 69)
        assert torch.allclose(prior.nll(x.reshape(3, 23, 3)), prior.nll(x))
        assert prior.nll(x[0]).shape == ()
        assert prior.residuals(x[0].reshape(23, 3)).shape == (69,)
        assert torch.allclose(prior.residuals(x[1]), prior.residuals(x)[1])
    np.testing.assert_allclose(prior.nll(x64.float()).numpy(), prior.nll(x64).numpy(), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError):
        prior.nll(torch.zeros(3, 72))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(prior):
    x = torch.as_tensor(prior.means[:4] + 0.1)
    for dtype in (torch.float32, torch.float64):
        xc = x.to("cuda", dtype)
        assert prior.nll(xc).device.type == "cuda"
        torch.testing.assert_close(prior.nll(xc).cpu(), prior.nll(x.to(dtype)), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(prior.residuals(xc).cpu(), prior.residuals(x.to(dtype)), rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------- differentiability
def test_jacfwd_of_residuals_is_the_cholesky_factor(prior):
    from torch.func import jacfwd, vmap

    rng = np.random.default_rng(1)
    x = torch.as_tensor(prior.means[[0, 3, 5]] + rng.normal(scale=0.1, size=(3, 69)))
    jac = vmap(jacfwd(prior.residuals))(x)
    assert jac.shape == (3, 69, 69)
    k = prior.component(x).numpy()
    for i in range(3):
        np.testing.assert_allclose(jac[i].numpy(), prior.precisions_chol[k[i]].T, atol=1e-10)


def test_jacfwd_of_nll_matches_finite_differences(prior):
    from torch.func import jacfwd, vmap

    rng = np.random.default_rng(2)
    x = torch.as_tensor(prior.means[[1, 2]] + rng.normal(scale=0.1, size=(2, 69)))
    g = vmap(jacfwd(prior.nll))(x)
    assert g.shape == (2, 69)
    eps = 1e-6
    for i in range(2):
        for j in (0, 10, 33, 50, 68):
            e = torch.zeros(69, dtype=torch.float64)
            e[j] = eps
            fd = (prior.nll(x[i] + e) - prior.nll(x[i] - e)) / (2 * eps)
            assert float(g[i, j]) == pytest.approx(float(fd), rel=1e-5, abs=1e-6)
    # autograd agrees
    xr = x.clone().requires_grad_(True)
    prior.nll(xr).sum().backward()
    torch.testing.assert_close(xr.grad, g)


def test_residuals_drive_a_gauss_newton_step_to_the_mean(prior):
    """One Gauss-Newton step on r(x) lands on the chosen component's mean (r is affine in x)."""
    from torch.func import jacfwd

    x = torch.as_tensor(prior.means[2] + 0.05)
    r = prior.residuals(x)
    j = jacfwd(prior.residuals)(x)
    step = torch.linalg.solve(j.T @ j, -(j.T @ r))
    k = int(prior.component(x))
    torch.testing.assert_close(x + step, torch.as_tensor(prior.means[k]), atol=1e-8, rtol=0)
