"""The Multi-RoI head and CLIFF head, independent of the backbone architecture."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hmrcli.nn.multiroi import CLIFFRegressor, MultiRoIHMR, PositionalEncoding

LAYOUTS = Path(__file__).resolve().parent / "data" / "checkpoint_layouts"  # copied from the reference
HEAD_PREFIXES = ("init_", "pos_enc.", "fc1.", "fc2.", "decpose.", "decshape.", "deccam.", "fuse_fc.",
                 "attention.", "proj_head.")


class TinyBackbone(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.feature_dim = dim
        self.conv = nn.Conv2d(3, 8, 3, stride=4)
        self.fc = nn.Linear(8, dim)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def _layout(name):
    path = LAYOUTS / name
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            out[parts[0]] = tuple(int(x) for x in parts[1].strip("()").split(",") if x.strip())
    return out


def _head_keys(layout):
    return {k: v for k, v in layout.items() if k.startswith(HEAD_PREFIXES)}


@pytest.mark.parametrize("fname,dim", [("mroi_res50_hmr_sim_keys.txt", 2048), ("mroi_hr48_hmr_sim_hrnet_keys.txt", 720)])
def test_multiroi_head_layout_matches_authors(fname, dim):
    model = MultiRoIHMR(TinyBackbone(dim), num_rois=5)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    assert ours == _head_keys(_layout(fname))


@pytest.mark.parametrize("fname", ["cliff_res50_keys.txt", "cliff_hr48_keys.txt"])
def test_cliff_head_layout(fname):
    model = CLIFFRegressor(TinyBackbone(2048))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    assert ours == _head_keys(_layout(fname))


def _f32(v):
    """The frequencies/phases are float32 buffers in the checkpoints: pi * 2^k rounded to float32."""
    return float(torch.tensor(v, dtype=torch.float32))


def test_positional_encoding_formula():
    pe = PositionalEncoding(32)
    x = torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)
    pe = pe.double()
    out = pe(x)[0]
    assert out.shape == (195,)
    expected = list(x[0])
    for k in range(32):
        f = _f32(math.pi * 2**k)
        expected += [math.sin(f * v) for v in x[0].tolist()]
        expected += [math.sin(f * v + _f32(math.pi / 2)) for v in x[0].tolist()]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


def _slow_fusion(model, feats, info):
    """Plain loops over m and n, written from docs/method.md §5."""
    b, m, d = feats.shape
    out = torch.zeros_like(feats)
    for bi in range(b):
        for q in range(m):
            rows = []
            for n in range(m):
                delta = info[bi, q] - info[bi, n]
                enc = [delta]
                for k in range(32):
                    f = _f32(math.pi * 2**k)
                    enc.append(torch.sin(f * delta))
                    enc.append(torch.sin(f * delta + _f32(math.pi / 2)))
                rows.append(model.fuse_fc(torch.cat([feats[bi, n], torch.cat(enc)])))
            logits = model.attention(torch.cat(rows))
            w = torch.exp(logits) / torch.exp(logits).sum()
            for n in range(m):
                out[bi, q] += w[n] * feats[bi, n]
    return out


@pytest.mark.parametrize("num_rois", [1, 3, 5])
def test_vectorised_fusion_matches_loops(num_rois):
    torch.manual_seed(0)
    model = MultiRoIHMR(TinyBackbone(64), num_rois=num_rois).double().eval()
    feats = torch.randn(2, num_rois, 64, dtype=torch.float64)
    info = torch.randn(2, num_rois, 3, dtype=torch.float64) * 0.5
    torch.testing.assert_close(model.fuse(feats, info), _slow_fusion(model, feats, info), atol=1e-5, rtol=0)
    w = model.fusion_weights(feats, info)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, num_rois, dtype=torch.float64))


def test_outputs_and_batch_independence():
    torch.manual_seed(0)
    model = MultiRoIHMR(TinyBackbone(32), num_rois=5).eval()
    crops = torch.randn(4, 5, 3, 64, 48)
    info = torch.randn(4, 5, 3) * 0.3
    with torch.no_grad():
        out = model(crops, info, return_proj=True)
        one = model(crops[2:3], info[2:3])
    assert out.rotmats.shape == (4, 5, 24, 3, 3) and out.betas.shape == (4, 5, 10) and out.cams.shape == (4, 5, 3)
    assert out.proj.shape == (4, 5, 32)
    torch.testing.assert_close(one.rotmats[0], out.rotmats[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(one.cams[0], out.cams[2], atol=1e-5, rtol=0)
    r = out.rotmats.double()
    torch.testing.assert_close(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(r), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(r.shape[:-2], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.person_rotmats, out.rotmats[:, 0])


def test_paper_aggregation_and_mean_start():
    torch.manual_seed(0)
    model = MultiRoIHMR(TinyBackbone(32), num_rois=5, aggregation="paper", n_iter=0).eval()
    out = model(torch.randn(2, 5, 3, 32, 32), torch.zeros(2, 5, 3))
    # zero iterations: the mean parameters (identity rotations, cam [0.9, 0, 0])
    torch.testing.assert_close(out.person_rotmats, torch.eye(3).expand(2, 24, 3, 3))
    torch.testing.assert_close(out.cams, torch.tensor([0.9, 0.0, 0.0]).expand(2, 5, 3))
    with pytest.raises(ValueError, match="num_rois"):
        MultiRoIHMR(TinyBackbone(8), num_rois=6)
    with pytest.raises(ValueError, match=r"\(B,5,3,H,W\)"):
        model(torch.randn(2, 4, 3, 32, 32), torch.zeros(2, 4, 3))


def test_cliff_forward():
    model = CLIFFRegressor(TinyBackbone(16)).eval()
    out = model(torch.randn(3, 1, 3, 32, 32), torch.randn(3, 1, 3))
    assert out.rotmats.shape == (3, 1, 24, 3, 3) and out.person_cam.shape == (3, 3)
