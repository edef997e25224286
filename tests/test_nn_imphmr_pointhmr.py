"""ImpHMR and PointHMR as regressors (hmrcli.nn.imphmr, hmrcli.nn.pointhmr, hmrcli.nn.mesh_sampling):
documented output shapes, gradients reach every part, the viewing direction, attention masks,
the shipped mesh sampling, native checkpoints round-trip, config validation and
``load_regressor(view_azimuth=...)``. CPU, tiny widths and crops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hmrcli.body import load_body_model
from hmrcli.nn.backbones import resnet18
from hmrcli.nn.checkpoints import (
    CheckpointError,
    RegressorConfig,
    build_model,
    load_checkpoint,
    save_native,
)
from hmrcli.nn.imphmr import ImpHMR, azimuth_rotation
from hmrcli.nn.mesh_sampling import LEVELS, load_mesh_sampling, upsample
from hmrcli.nn.pointhmr import MASK_HOPS, NUM_JOINTS_TOKENS, PointHMR


@pytest.fixture(scope="module")
def sampling():
    return load_mesh_sampling("free")


def _inputs(b, m, hw=(64, 48), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, m, 3, *hw, generator=g), torch.randn(b, m, 3, generator=g) * 0.3


# ------------------------------------------------------------------ ImpHMR


@pytest.mark.parametrize("m", [1, 3])
def test_imphmr_shapes_and_gradients(m):
    torch.manual_seed(0)
    net = ImpHMR(resnet18(), num_rois=m, field_hidden=16, feature_hw=4, n_samples=6)
    crops, info = _inputs(2, m)
    canon, view = net.forward_views(crops, info, [torch.zeros(2), torch.tensor([0.4, -1.2])], silhouettes=[False, True],
                                    return_proj=m > 1)
    for out in (canon, view):
        assert out.rotmats.shape == (2, m, 24, 3, 3) and out.betas.shape == (2, m, 10) and out.cams.shape == (2, m, 3)
        assert out.person_rotmats.shape == (2, 24, 3, 3) and out.person_betas.shape == (2, 10)
        assert torch.allclose(out.rotmats.transpose(-1, -2) @ out.rotmats, torch.eye(3).expand(2, m, 24, 3, 3),
                              atol=1e-5)
    assert view.extras["silhouette"].shape == (2, m, 32, 32) and "silhouette" not in canon.extras
    assert (canon.proj is not None) == (m > 1)
    loss = view.pose6d.square().sum() + view.extras["silhouette"].sigmoid().sum() + canon.cams.sum()
    loss.backward()
    for name in ("backbone.conv1.weight", "fg_attention.weight", "field.fc_in.weight", "field.fc_view.weight",
                 "aggregate.weight", "fc1.weight", "silhouette_decoder.0.weight"):
        p = dict(net.named_parameters())[name]
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    if m > 1:
        assert float(net.fuse_fc.weight.grad.abs().sum()) > 0


def test_imphmr_viewing_direction():
    torch.manual_seed(1)
    net = ImpHMR(resnet18(), field_hidden=16, feature_hw=4, n_samples=6).eval()
    crops, info = _inputs(2, 1, seed=1)
    with torch.no_grad():
        base = net(crops, info)
        same = net(crops, info, azimuth=0.0)
        net.view_azimuth_deg = 90.0
        side = net(crops, info)
        explicit = net(crops, info, azimuth=math.pi / 2)
    assert torch.equal(base.person_rotmats, same.person_rotmats)
    assert float((side.person_rotmats - base.person_rotmats).abs().max()) > 1e-6  # another view, another estimate
    assert torch.allclose(side.person_rotmats, explicit.person_rotmats, atol=1e-6)
    assert torch.equal(side.cams, base.cams)  # the person stays where the canonical view puts it
    # R_y: right-handed about the camera's y axis; the virtual camera at 90 deg looks along +x
    r = azimuth_rotation(torch.tensor([math.pi / 2]))[0]
    assert torch.allclose(r @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(torch.linalg.det(r), torch.tensor(1.0))


# ------------------------------------------------------------------ PointHMR


def test_pointhmr_shapes_gradients_and_masks(sampling):
    torch.manual_seed(0)
    net = PointHMR(resnet18(), sampling, token_dim=32, grid_hw=(2, 2))
    crops, info = _inputs(2, 1)
    out = net(crops, info)
    n1, n0 = LEVELS
    ex = out.extras
    assert ex["heatmaps"].shape == (2, n0, 16, 12)  # 1/4 of the 64x48 crop
    assert ex["vertices0"].shape == (2, n0, 3) and ex["vertices1"].shape == (2, n1, 3)
    assert ex["vertices"].shape == (2, sampling.num_vertices, 3) and ex["joints"].shape == (2, NUM_JOINTS_TOKENS, 3)
    assert out.rotmats.shape == (2, 1, 24, 3, 3) and out.cams.shape == (2, 1, 3) and out.person_betas.shape == (2, 10)
    (ex["vertices"].square().sum() + out.pose6d.square().sum() + out.cams.sum() + ex["heatmaps"].mean()).backward()
    for name in ("backbone.conv1.weight", "heatmap_decoder.0.weight", "feature_decoder.0.weight",
                 "grid_decoder.0.weight", "joint_tokens", "vertex_embed", "cam_token.weight", "reduce2.weight",
                 "fc1.weight"):
        p = dict(net.named_parameters())[name]
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    # progressive masking: vertex tokens see vertices within 7, 5, 3, 1 edges; other tokens see all
    masks = net.attention_masks(4)
    k = 1 + NUM_JOINTS_TOKENS
    hops = torch.from_numpy(sampling.hops0.astype(np.int64))
    for thr, mk in zip(MASK_HOPS, masks, strict=True):
        assert torch.equal(mk[k:k + n0, k:k + n0], hops > thr)
        assert not mk[:k].any() and not mk[:, :k].any() and not mk[k + n0:].any()
    assert int(masks[0][k:k + n0, k:k + n0].sum()) < int(masks[3][k:k + n0, k:k + n0].sum())
    with pytest.raises(ValueError, match="one RoI"):
        net(torch.randn(1, 2, 3, 64, 48), torch.zeros(1, 2, 3))


def test_mesh_sampling_of_the_free_body(sampling):
    body = load_body_model("free")
    assert sampling.levels == LEVELS and sampling.num_vertices == body.num_vertices
    assert len(np.unique(sampling.down0)) == LEVELS[1] and len(np.unique(sampling.down1)) == LEVELS[0]
    assert np.all(np.isin(sampling.down0, sampling.down1))  # the coarse vertices are mid vertices
    for w in (sampling.up0_w, sampling.up1_w):
        assert np.allclose(w.sum(1), 1.0, atol=1e-5) and w.min() >= 0
    assert np.array_equal(sampling.hops0, sampling.hops0.T) and np.all(np.diag(sampling.hops0) == 0)
    # coarse -> mid -> full reproduces posed bodies to a few millimetres on average
    g = torch.Generator().manual_seed(0)
    v = body(torch.randn(4, 72, generator=g, dtype=torch.float64) * 0.3).vertices
    mid = upsample(v[:, torch.from_numpy(sampling.down0)], torch.from_numpy(sampling.up0_idx),
                   torch.from_numpy(sampling.up0_w))
    full = upsample(mid, torch.from_numpy(sampling.up1_idx), torch.from_numpy(sampling.up1_w))
    err = (full - v).norm(dim=-1)
    assert float(err.mean()) < 0.01 and float(err.median()) < 0.006


def test_shipped_mesh_sampling_is_what_the_derivation_gives(sampling):
    pytest.importorskip("fast_simplification")
    from hmrcli.nn.mesh_sampling import derive_mesh_sampling

    body = load_body_model("free")
    again = derive_mesh_sampling(body.template(torch.float64).numpy(), body.faces)
    for k in ("down0", "down1", "up0_idx", "up1_idx", "hops0"):
        assert np.array_equal(getattr(again, k), getattr(sampling, k)), k
    assert np.allclose(again.up1_w, sampling.up1_w, atol=1e-6)


# ------------------------------------------------------------------ registry, checkpoints, loading


@pytest.mark.parametrize("arch,m,head", [("imphmr", 1, 16), ("imphmr", 2, 16), ("pointhmr", 1, 32)])
def test_native_checkpoint_round_trip(tmp_path, arch, m, head):
    cfg = RegressorConfig(arch=arch, backbone="resnet18", num_rois=m, crop_hw=(64, 48), head_dim=head,
                          body_model="free")
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    path = save_native(net, cfg, tmp_path / arch)
    loaded, rc = load_checkpoint(path)
    assert (rc.arch, rc.num_rois, rc.head_dim) == (arch, m, head)
    crops, info = _inputs(1, m)
    with torch.no_grad():
        a, b = net(crops, info), loaded(crops, info)
    assert torch.equal(a.person_rotmats, b.person_rotmats) and torch.equal(a.cams, b.cams)
    assert torch.equal(a.person_betas, b.person_betas)


def test_pointhmr_checkpoint_carries_its_mesh_sampling(tmp_path, sampling):
    """A PointHMR checkpoint of a body model without a shipped sampling (SMPL: derived from the
    user's files at training time) loads from the file alone: the sampling is read back from
    the checkpoint's buffers. Without a sampling or with one missing, a clear error."""
    from safetensors.torch import load_file, save_file

    cfg = RegressorConfig(arch="pointhmr", backbone="resnet18", num_rois=1, crop_hw=(64, 48), head_dim=32,
                          body_model="smpl")
    with pytest.raises(CheckpointError, match="mesh sampling of body model 'smpl'"):
        build_model(cfg)
    # another sampling than the shipped one (the levels reversed in order), so that a loader
    # falling back to the shipped one would show
    other = type(sampling)(**{**sampling.__dict__, "down0": sampling.down0[::-1].copy()})
    torch.manual_seed(0)
    net = build_model(cfg, mesh_sampling=other).eval()
    path = save_native(net, cfg, tmp_path / "p_smpl")
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded.down0, torch.from_numpy(other.down0))
    crops, info = _inputs(1, 1)
    with torch.no_grad():
        assert torch.equal(net(crops, info).person_rotmats, loaded(crops, info).person_rotmats)
    sd = load_file(str(path))
    del sd["hops0"]
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="without its mesh sampling.*hops0"):
        load_checkpoint(path)


def test_config_validation():
    for kw, field in ((dict(arch="pointhmr", num_rois=2), "num_rois"), (dict(arch="multiroi", head_dim=64), "head_dim"),
                      (dict(arch="imphmr", aggregation="paper"), "aggregation"),
                      (dict(arch="pointhmr", num_rois=1, head_dim=100), "head_dim")):
        with pytest.raises(CheckpointError, match=field):
            RegressorConfig(**kw).validate("x.json")


def test_load_regressor_view_azimuth(tmp_path):
    from hmrcli.weights.catalogue import load_regressor

    torch.manual_seed(0)
    for arch in ("imphmr", "cliff"):
        cfg = RegressorConfig(arch=arch, backbone="resnet18", num_rois=1, crop_hw=(64, 48),
                              head_dim=16 if arch == "imphmr" else 0)
        save_native(build_model(cfg), cfg, tmp_path / arch)
    net = load_regressor(tmp_path / "imphmr.safetensors", view_azimuth=45)
    assert net.view_azimuth_deg == 45.0
    with pytest.raises(CheckpointError, match="needs an ImpHMR checkpoint"):
        load_regressor(tmp_path / "cliff.safetensors", view_azimuth=45)


def test_imphmr_exports_to_onnx_with_the_same_outputs(tmp_path):
    """The regression engine's ONNX runtime takes ImpHMR as it is (canonical view). (PointHMR
    exports the same way; its graph is ~90 MB even at test widths, so it is not exported here.)"""
    pytest.importorskip("onnxscript")
    from hmrcli.weights.onnx_regressor import export_onnx

    cfg = RegressorConfig(arch="imphmr", backbone="resnet18", num_rois=1, crop_hw=(64, 48), head_dim=16,
                          body_model="free")
    torch.manual_seed(0)
    rep = export_onnx(build_model(cfg).eval(), cfg, tmp_path / "imphmr.onnx")
    assert max(rep["max_abs_diff"].values()) < 1e-4
