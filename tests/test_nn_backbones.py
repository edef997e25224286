"""Backbones: parameter layouts of the released/authors' checkpoints, output shapes,
batch independence.

Kept light (2 CPU cores): ResNet-50 runs at batch <= 2; each HRNet-W48 gets one
forward (256x192, batch 1); the HRNet code paths (fusion, transitions, heads) are
also exercised on tiny-width HRNets, which are cheap.
"""

from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

from hmrcli.nn.backbones import (
    BACKBONES,
    BackboneSpec,
    ClsHRNet,
    PoseHRNet,
    ResNet,
    create_backbone,
)
from hmrcli.nn.backbones._hrnet import _UpsampleFuse

LAYOUTS = Path(__file__).resolve().parent / "data" / "checkpoint_layouts"  # copied from the reference

# Head (non-backbone) parameters of the authors' HMR_sim / HMR_sim_hrnet and of CLIFF.
HEAD_PREFIXES = ("init_pose", "init_shape", "init_cam", "pos_enc.", "fuse_fc.", "attention.", "fc1.", "fc2.",
                 "decpose.", "decshape.", "deccam.", "proj_head.")

# layout file -> (backbone prefix, registry name)
CASES = {
    "mroi_res50_hmr_sim_keys.txt": ("", "resnet50"),
    "cliff_res50_keys.txt": ("encoder.", "resnet50"),
    "mroi_hr48_hmr_sim_hrnet_keys.txt": ("backbone.", "hrnet_w48_pose"),
    "cliff_hr48_keys.txt": ("encoder.", "hrnet_w48_cls"),
}

CROPS = {"square": (224, 224), "rect": (256, 192)}


def _parse_layout(name: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype); the dtype column is optional (CLIFF listings lack it)."""
    out = {}
    for line in (LAYOUTS / name).read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        shape = tuple(int(s) for s in parts[1].strip("()").split(",") if s.strip())
        if len(parts) >= 3:
            dtype = getattr(torch, parts[2].strip().removeprefix("torch."))
        else:
            dtype = torch.int64 if parts[0].endswith("num_batches_tracked") else torch.float32
        out[parts[0]] = (shape, dtype)
    return out


def _backbone_keys(layout_name: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    prefix, _ = CASES[layout_name]
    layout = _parse_layout(layout_name)
    head = {k for k in layout if k.startswith(HEAD_PREFIXES)}
    if prefix:
        rest = set(layout) - head
        assert all(k.startswith(prefix) for k in rest), sorted(k for k in rest if not k.startswith(prefix))[:5]
        return {k[len(prefix):]: v for k, v in layout.items() if k.startswith(prefix)}
    backbone = {k: v for k, v in layout.items() if k not in head}
    assert {k.split(".")[0] for k in backbone} == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}
    return backbone


@cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone(name).eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_free_models():
    # One intra-op thread: on shared 2-core runners, two OpenMP threads sometimes
    # spin-wait on a descheduled partner and run ~50x slower; one thread is ~2x
    # slower at worst.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _model.cache_clear()  # the three full-size backbones hold ~0.7 GB


def _calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Set BN running statistics from one batch, so that eval-mode activations are
    O(1) (random He-initialised nets otherwise grow to ~1e2..1e8)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(x)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def _check_batch_independence(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x (2, 3, H, W): sample 0's output must not depend on sample 1 and vice versa."""
    with torch.no_grad():
        both = model(x)
        alone = model(x[:1])
        other = x.clone()
        other[0] = torch.randn_like(x[0])
        changed = model(other)
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1], changed[1], atol=1e-5, rtol=0)
    return both


# ---------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout_name", sorted(CASES))
def test_state_dict_matches_layout(layout_name):
    expected = _backbone_keys(layout_name)
    sd = _model(CASES[layout_name][1]).state_dict()
    assert sorted(sd) == sorted(expected)
    assert list(sd) == list(expected)  # same order as the checkpoints, too
    wrong = {k: ((tuple(v.shape), v.dtype), expected[k]) for k, v in sd.items()
             if (tuple(v.shape), v.dtype) != expected[k]}
    assert not wrong


@pytest.mark.parametrize("layout_name", sorted(CASES))
def test_strict_load_of_layout_shaped_tensors(layout_name):
    model = _model(CASES[layout_name][1])
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    fake = {
        k: (torch.randint(0, 1000, shape, generator=g, dtype=dtype) if dtype == torch.int64
            else torch.randn(shape, generator=g, dtype=dtype))
        for k, (shape, dtype) in _backbone_keys(layout_name).items()
    }
    try:
        result = model.load_state_dict(fake, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in fake.items())
    finally:
        model.load_state_dict(saved, strict=True)


# ---------------------------------------------------------------- registry


def test_registry():
    assert set(BACKBONES) == {"resnet50", "resnet18", "hrnet_w48_pose", "hrnet_w48_cls", "hrnet_w32_pose"}
    assert {n: s.feature_dim for n, s in BACKBONES.items()} == {
        "resnet50": 2048, "resnet18": 512, "hrnet_w48_pose": 720, "hrnet_w48_cls": 2048, "hrnet_w32_pose": 480}
    for name, spec in BACKBONES.items():
        assert isinstance(spec, BackboneSpec) and spec.name == name and spec.description
        assert _model(name).feature_dim == spec.feature_dim
    assert isinstance(_model("resnet50"), ResNet)
    assert isinstance(_model("hrnet_w48_pose"), PoseHRNet)
    assert isinstance(_model("hrnet_w48_cls"), ClsHRNet)
    with pytest.raises(KeyError, match="available"):
        create_backbone("vit_h")


def test_bn_settings_as_in_original_code():
    for name in BACKBONES:
        bns = [m for m in _model(name).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert bns and all(bn.momentum == 0.1 and bn.eps == 1e-5 and bn.track_running_stats for bn in bns)


# ---------------------------------------------------------------- forward


@pytest.fixture(scope="module")
def resnet_calibrated():
    model = _model("resnet50")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(2)
    _calibrate_bn(model, torch.randn(2, 3, 224, 224))
    yield model
    model.load_state_dict(saved)


@pytest.mark.parametrize("crop", sorted(CROPS))
def test_resnet_shapes_and_batch_independence(resnet_calibrated, crop):
    h, w = CROPS[crop]
    torch.manual_seed(3)
    x = torch.randn(2, 3, h, w)
    y = _check_batch_independence(resnet_calibrated, x)
    assert y.shape == (2, 2048) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert y.abs().max() > 1e-3  # not a degenerate all-zero feature
    with torch.no_grad():
        assert resnet_calibrated.forward_maps(x[:1]).shape == (1, 2048, h // 32, w // 32)


@pytest.mark.parametrize("name", ["hrnet_w48_pose", "hrnet_w48_cls"])
def test_hrnet_w48_single_forward(name):
    model = _model(name)
    torch.manual_seed(4)
    with torch.no_grad():
        y = model(torch.randn(1, 3, 256, 192))
    assert y.shape == (1, BACKBONES[name].feature_dim)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def _tiny_hrnets():
    # width 4, one module per stage, one block per branch: the same code paths as W48.
    return {
        "pose": PoseHRNet(width=4, num_joints=3, num_modules=(1, 1, 1), num_blocks=1),
        "cls": ClsHRNet(width=4, head_channels=(2, 3, 4, 5), feature_dim=16, num_modules=(1, 1, 1), num_blocks=1),
    }


@pytest.mark.parametrize("kind", ["pose", "cls"])
def test_tiny_hrnet_shapes_and_batch_independence(kind):
    torch.manual_seed(5)
    model = _tiny_hrnets()[kind]
    assert model.feature_dim == (60 if kind == "pose" else 16)
    _calibrate_bn(model, torch.randn(2, 3, 256, 192))
    for h, w in [*CROPS.values(), (100, 70)]:  # the last one is not a multiple of 32
        y = _check_batch_independence(model, torch.randn(2, 3, h, w))
        assert y.shape == (2, model.feature_dim) and y.dtype == torch.float32
        assert torch.isfinite(y).all() and y.abs().max() > 1e-3


def test_upsample_fuse_equals_original_scale_factor_upsampling():
    torch.manual_seed(6)
    fuse = _tiny_hrnets()["pose"].stage4[0].fuse_layers[0][3].eval()  # 1/32 -> 1/4 branch, factor 8
    assert isinstance(fuse, _UpsampleFuse)
    original = nn.Sequential(fuse[0], fuse[1], nn.Upsample(scale_factor=8, mode="nearest")).eval()
    x = torch.randn(2, fuse[0].in_channels, 7, 6)
    with torch.no_grad():
        torch.testing.assert_close(fuse(x, (56, 48)), original(x), atol=0, rtol=0)
