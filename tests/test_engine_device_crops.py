"""Batched crops on the device (:func:`hmrcli.geometry.crop_batch`) and the regression engine's
speed knobs, on CPU tensors (the same code runs on CUDA; the CUDA checks are at the end).

* ``crop_batch`` cuts every RoI of several persons of images of different sizes in one
  ``grid_sample`` and equals OpenCV's crops (the cv2 path) within 1 grey level;
* the engine's torch crop path gives the cv2 path's estimates within float noise of an
  input-sensitive network (tests/_probe.py);
* ``bbox_info`` and the camera conversion run in torch and equal numpy;
* backbone chunking changes nothing; bf16 autocast stays near fp32; ``precision="auto"``;
  ``batch_size="auto"``; ``torch.compile``.
"""

from __future__ import annotations

import _probe as P
import cv2
import numpy as np
import pytest
import torch

import hmrcli.geometry as G
from hmrcli.body import load_body_model
from hmrcli.engine.regress import (
    DEFAULT_CPU_BATCH_SIZE,
    PersonBox,
    RegressionEngine,
    batch_size_for_memory,
    resolve_precision,
)
from hmrcli.nn.checkpoints import build_model

CFG = P.small_config()
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _natural(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 3.0) * 4 - 384, 0, 255).astype(np.uint8)


#: three images of different sizes and their persons' crop boxes (cx, cy, b); RoIs reach past
#: every border, one image has one person, one has three
IMAGES = [_natural(360, 480, 1), _natural(200, 150, 2), _natural(500, 300, 3)]
BOXES = [np.array([[240.0, 180.0, 300.0], [30.0, 350.0, 200.0]]), np.array([[75.0, 100.0, 120.0]]),
         np.array([[150.0, 250.0, 400.0], [280.0, 30.0, 60.0], [10.0, 490.0, 100.0]])]


def _cases():
    index = np.concatenate([[i] * len(b) for i, b in enumerate(BOXES)])
    return index, G.make_rois(np.concatenate(BOXES))  # (6,), (6, 5, 3)


@pytest.mark.parametrize("crop_hw", [(256, 192), (224, 224), (64, 48)])
def test_crop_batch_equals_the_cv2_crops(crop_hw):
    index, rois = _cases()
    A = G.crop_affine(rois, crop_hw)
    # the persons in another order than their images (interleaved)
    order = np.array([3, 0, 2, 5, 1, 4])
    out = G.crop_batch([torch.from_numpy(im) for im in IMAGES], index[order], A[order], crop_hw)
    assert out.shape == (6, 5, 3, *crop_hw) and out.dtype == torch.float32
    h, w = crop_hw
    for k, n in enumerate(order):
        for m in range(5):
            cv = G.crop_image_np(IMAGES[index[n]], A[n, m], crop_hw).astype(np.float32)
            diff = np.abs(out[k, m].permute(1, 2, 0).numpy() - cv)
            # every pixel, borders and the zeros outside the image included; interior pixels
            assert diff.max() <= 1.0, (k, m, diff.max())
            assert diff[1:h - 1, 1:w - 1].mean() < 0.3, (k, m, diff.mean())
    # some RoIs reach past their image (else the zeros outside could not show) and see content
    assert (out == 0).all(dim=2).any() and out.mean() > 10


def test_crop_batch_rotated_affines_and_layouts():
    index, rois = _cases()
    rot = np.linspace(-30, 30, rois.shape[0] * rois.shape[1]).reshape(rois.shape[:2])
    A = G.crop_affine(rois, (64, 48), rot_deg=rot)
    out = G.crop_batch(IMAGES, index, A, (64, 48))  # numpy images are accepted
    for n in range(len(index)):
        for m in range(5):
            cv = G.crop_image_np(IMAGES[index[n]], A[n, m], (64, 48)).astype(np.float32)
            assert np.abs(out[n, m].permute(1, 2, 0).numpy() - cv).max() <= 1.0
    # one image alone (2D sampling) == that image among others (3D sampling), and (N, 2, 3) affines
    alone = G.crop_batch([IMAGES[2]], np.zeros(3, int), A[3:], (64, 48))
    torch.testing.assert_close(alone, out[3:], atol=1e-2, rtol=0)
    torch.testing.assert_close(G.crop_batch(IMAGES, index, A[:, 0], (64, 48)), out[:, 0])
    # a (B, C, H, W) tensor of same-sized images == crop_images, in float64
    imgs = torch.from_numpy(np.stack([IMAGES[0], IMAGES[0][::-1].copy()])).permute(0, 3, 1, 2).double()
    want = G.crop_images(imgs, A[:2], (64, 48))
    got = G.crop_batch(imgs, [0, 1], A[:2], (64, 48))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)
    assert G.crop_batch(IMAGES, np.zeros(0, int), A[:0], (64, 48)).shape == (0, 5, 3, 64, 48)
    with pytest.raises(ValueError, match="image_index"):
        G.crop_batch(IMAGES, [0, 3], A[:2], (64, 48))
    with pytest.raises(ValueError, match="image_index"):
        G.crop_batch(IMAGES, [0], A[:2], (64, 48))


def test_bbox_info_and_camera_conversion_run_in_torch():
    index, rois = _cases()
    wh = np.array([IMAGES[i].shape[1::-1] for i in index], dtype=np.float64)
    focal = np.array([500.0, 400.0, 700.0, 450.0, 600.0, 520.0])
    pp = wh / 2 + 3.0
    info = G.bbox_info(rois, wh[:, None], focal[:, None], pp[:, None])
    t = {k: torch.from_numpy(v) for k, v in dict(rois=rois, wh=wh, f=focal, pp=pp).items()}
    info_t = G.bbox_info(t["rois"], t["wh"][:, None], t["f"][:, None], t["pp"][:, None])
    assert isinstance(info_t, torch.Tensor) and info_t.dtype == torch.float64
    np.testing.assert_allclose(info_t.numpy(), info, rtol=1e-14, atol=1e-14)
    cams = np.stack([np.linspace(0.8, 1.2, 6), np.linspace(-0.1, 0.1, 6), np.linspace(0.2, 0.0, 6)], -1)
    full = G.local_to_full(cams, rois[:, 0], wh, focal, principal=pp)
    full_t = G.local_to_full(torch.from_numpy(cams), t["rois"][:, 0], t["wh"], t["f"], principal=t["pp"])
    np.testing.assert_allclose(full_t.numpy(), full, rtol=1e-14)


# --------------------------------------------------------------------------- the engine

@pytest.fixture(scope="module")
def body(fake_smpl_dir):
    return load_body_model("smpl", smpl_dir=fake_smpl_dir)


@pytest.fixture(scope="module")
def sensitive(tmp_path_factory):
    _, model = P.small_checkpoint(tmp_path_factory.mktemp("sensitive") / "sensitive")
    model.config = CFG
    return model


#: images of different sizes, persons reaching past the borders
ENGINE_CASES = [
    (P.quadrant_image(), [[60.0, 30.0, 200.0, 220.0], [180.0, 80.0, 300.0, 230.0]]),
    (P.portrait_image(), [[20.0, 10.0, 120.0, 170.0]]),
    (_natural(300, 420, 7), [[100.0, 40.0, 220.0, 290.0], [-20.0, 100.0, 60.0, 280.0], [300.0, 10.0, 430.0, 150.0]]),
]


def _run(engine, cases=ENGINE_CASES, focal=None):
    prepared = []
    for image, boxes in cases:
        persons = [PersonBox(np.array(b)) for b in boxes]
        prepared.append((engine.prepare(image, persons, focal), persons))
    return engine.run(prepared)


def _compare(a, b, *, cams, rot, betas, verts, cam_t):
    worst = {"cams": 0.0, "rot": 0.0, "betas": 0.0, "verts": 0.0, "cam_t": 0.0}
    for ra, rb in zip(a, b):
        assert len(ra) == len(rb)
        for ea, eb in zip(ra, rb):
            np.testing.assert_array_equal(ea.rois, eb.rois)
            np.testing.assert_array_equal(ea.bbox_info, eb.bbox_info)
            worst["cams"] = max(worst["cams"], np.abs(ea.cams_local - eb.cams_local).max())
            worst["rot"] = max(worst["rot"], np.abs(ea.rotmats - eb.rotmats).max())
            worst["betas"] = max(worst["betas"], np.abs(ea.betas - eb.betas).max())
            worst["verts"] = max(worst["verts"], np.abs(ea.vertices_model - eb.vertices_model).max())
            worst["cam_t"] = max(worst["cam_t"], (np.abs(ea.cam_t - eb.cam_t) / np.abs(eb.cam_t).max()).max())
    limits = {"cams": cams, "rot": rot, "betas": betas, "verts": verts, "cam_t": cam_t}
    assert all(worst[k] <= limits[k] for k in worst), (worst, limits)
    return worst


def test_engine_torch_crops_equal_the_cv2_path(sensitive, body):
    cv = RegressionEngine(sensitive, body, device="cpu", batch_size=4, crops="cv2")
    th = RegressionEngine(sensitive, body, device="cpu", batch_size=4, crops="torch")
    assert (cv.crop_path, th.crop_path) == ("cv2", "torch")
    a, b = _run(cv), _run(th)
    # crops within 1 grey level (mean ~0.2) move this full-gain network's outputs by ~1e-3
    # (measured: cams 1.2e-3, rotations 3.0e-3, betas 1.4e-3, vertices 3.0 mm, t 3.8e-4 relative)
    _compare(a, b, cams=3e-3, rot=6e-3, betas=4e-3, verts=6e-3, cam_t=1e-3)
    # and a network with HMR's initialisation (small residual steps, like trained heads) by ~2e-5
    torch.manual_seed(1)
    hmr = build_model(CFG).eval()
    hmr.config = CFG
    _compare(_run(RegressionEngine(hmr, body, crops="cv2")), _run(RegressionEngine(hmr, body, crops="torch")),
             cams=1e-4, rot=1e-4, betas=1e-4, verts=1e-4, cam_t=1e-4)
    # the persons differ a lot more than that (a mix-up would show)
    assert np.abs(a[0][0].cams_local - a[2][0].cams_local).max() > 5e-2
    # the torch path keeps the image and the affines instead of crops
    p = th.prepare(ENGINE_CASES[0][0], [PersonBox(np.array(ENGINE_CASES[0][1][0]))])
    assert p.crops is None and p.image.dtype == torch.uint8 and p.affines.shape == (1, 5, 2, 3)
    # with the probe, whose outputs are pixel means, the torch path's crops equal our own
    # OpenCV crops to the cv2 path's tolerance scaled by the grey-level difference
    probe = RegressionEngine(P.LinearProbe(CFG), body, batch_size=2, crops="torch")
    res = _run(probe, ENGINE_CASES[:2])
    for (image, boxes), ests in zip(ENGINE_CASES[:2], res):
        for xyxy, est in zip(boxes, ests):
            inp = P.expected_inputs(image, xyxy, CFG)
            want = P.probe_outputs_np(np.stack([P.features_np(x) for x in inp.x]), inp.bbox_info)
            np.testing.assert_allclose(est.cams_local, want["cams"], atol=2e-3)
            np.testing.assert_allclose(est.bbox_info, inp.bbox_info, atol=1e-6)
    # three images, batch 4: the second network call holds persons of two images
    assert [c[0][0] for c in probe.model.calls] == [2, 1]


def test_backbone_chunking_changes_nothing(sensitive, body):
    torch.manual_seed(0)
    x = torch.rand(3, 5, 3, 64, 48) * 4 - 2
    info = torch.randn(3, 5, 3) * 0.3
    with torch.no_grad():
        whole = sensitive(x, info)
        for chunk in (1, 4, 7, 15, 100):
            part = sensitive(x, info, backbone_chunk=chunk)
            torch.testing.assert_close(part.features, whole.features, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(part.cams, whole.cams, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(part.rotmats, whole.rotmats, atol=1e-5, rtol=1e-5)
    a = _run(RegressionEngine(sensitive, body, batch_size=6, backbone_chunk=0))
    b = _run(RegressionEngine(sensitive, body, batch_size=6, backbone_chunk=4))
    _compare(a, b, cams=1e-5, rot=1e-5, betas=1e-5, verts=1e-5, cam_t=1e-5)
    # CLIFF takes it too; training mode ignores it (BatchNorm statistics are per batch)
    from hmrcli.nn.checkpoints import RegressorConfig

    cliff = build_model(RegressorConfig(arch="cliff", backbone="resnet18", num_rois=1, crop_hw=(64, 48))).eval()
    with torch.no_grad():
        torch.testing.assert_close(cliff(x[:, :1], info[:, :1], backbone_chunk=2).cams, cliff(x[:, :1], info[:, :1]).cams,
                                   atol=1e-5, rtol=1e-5)
    from hmrcli.nn.multiroi import run_backbone

    bb = sensitive.backbone.train()
    try:
        calls = []
        handle = bb.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
        run_backbone(bb, x.reshape(15, 3, 64, 48), 4)
        handle.remove()
        assert calls == [15]
    finally:
        bb.eval()


def test_bf16_autocast_stays_near_fp32(sensitive, body):
    """bf16 (8-bit mantissa) autocast on the CPU against fp32, with the full-gain network (every
    output moves with its features) and with HMR's initialisation (gain 0.01, like trained
    heads' small residual steps)."""
    fp32 = _run(RegressionEngine(sensitive, body, precision="fp32"))
    bf16 = _run(RegressionEngine(sensitive, body, precision="bf16"))
    # measured: cams 0.025, rotations 0.033, betas 0.023, vertices 20 mm, t 0.9 % (relative)
    w = _compare(fp32, bf16, cams=0.06, rot=0.08, betas=0.06, verts=0.05, cam_t=0.025)
    assert w["cams"] > 1e-4  # bf16 did run
    torch.manual_seed(1)
    hmr = build_model(CFG).eval()
    hmr.config = CFG
    # measured: 2e-4 .. 4e-4 (vertices 0.3 mm)
    _compare(_run(RegressionEngine(hmr, body, precision="fp32")), _run(RegressionEngine(hmr, body, precision="bf16")),
             cams=1e-3, rot=1e-3, betas=1e-3, verts=1e-3, cam_t=1e-3)


def test_precision_and_defaults_per_device(sensitive, body):
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cuda:1") == "bf16" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", "cpu")
    eng = RegressionEngine(sensitive, body)
    assert eng.settings() == {"device": "cpu", "precision": "fp32", "crops": "cv2", "channels_last": True,
                              "compile": False, "backbone_chunk": 8, "batch_size": 16, "overlap": True}
    with pytest.raises(ValueError, match="crops must be"):
        RegressionEngine(sensitive, body, crops="gpu")
    with pytest.raises(ValueError, match="backbone_chunk"):
        RegressionEngine(sensitive, body, backbone_chunk=-1)


def test_channels_last_is_a_layout_only(sensitive, body):
    a = _run(RegressionEngine(sensitive, body, channels_last=False))
    b = _run(RegressionEngine(sensitive, body, channels_last=True))
    _compare(a, b, cams=1e-5, rot=1e-5, betas=1e-5, verts=1e-5, cam_t=1e-5)


def test_auto_batch_size(sensitive, body):
    assert RegressionEngine(sensitive, body, batch_size="auto").batch_size == DEFAULT_CPU_BATCH_SIZE
    with pytest.raises(ValueError, match="batch_size"):
        RegressionEngine(sensitive, body, batch_size="many")
    gib = 2**30
    assert batch_size_for_memory(10 * gib, gib // 10) == 60  # 60 % of 10 GiB at 0.1 GiB each
    assert batch_size_for_memory(gib, 2 * gib) == 1 and batch_size_for_memory(80 * gib, 1000) == 256
    assert batch_size_for_memory(80 * gib, 50 * 2**20, cap=1000) == 983


@pytest.mark.slow
def test_compiled_network_gives_the_same_estimates(sensitive, body):
    pytest.importorskip("torch._inductor")
    a = _run(RegressionEngine(sensitive, body, batch_size=4))
    try:
        b = _run(RegressionEngine(sensitive, body, batch_size=4, compile=True))
    except Exception as e:  # no working C++ compiler for inductor on this machine
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {e}")
    _compare(a, b, cams=1e-4, rot=1e-4, betas=1e-4, verts=1e-4, cam_t=1e-4)


def _exactly_equal(a, b):
    for ra, rb in zip(a, b, strict=True):
        for ea, eb in zip(ra, rb, strict=True):
            for f in ("rois", "bbox_info", "cams_local", "rotmats", "betas", "cam_t", "vertices_model", "joints_model"):
                np.testing.assert_array_equal(getattr(ea, f), getattr(eb, f), err_msg=f)


@pytest.mark.parametrize("crops", ["cv2", "torch"])
def test_staging_the_next_batch_changes_nothing(sensitive, body, crops):
    """``overlap`` (batch k+1's pixels staged while batch k runs; on CUDA on a side stream):
    the same numbers, bit for bit, as staging each batch when it runs, over several batches
    that mix images (batch 2 over 2 + 1 + 3 persons)."""
    on = RegressionEngine(sensitive, body, batch_size=2, crops=crops, overlap=True)
    off = RegressionEngine(sensitive, body, batch_size=2, crops=crops, overlap=False)
    staged = []
    real_stage = on.stage
    on.stage = lambda prepared, chunk: staged.append([tuple(c) for c in chunk]) or real_stage(prepared, chunk)
    a = _run(on)
    _exactly_equal(a, _run(off))
    # every batch was staged once, in order, before it ran
    assert staged == [[(0, 0), (0, 1)], [(1, 0), (2, 0)], [(2, 1), (2, 2)]]
    # a stop request between batches still returns whole images only (staging runs ahead)
    calls = iter([False, True])
    part = on.run([(on.prepare(im, [PersonBox(np.array(b)) for b in bx]), [PersonBox(np.array(b)) for b in bx])
                   for im, bx in ENGINE_CASES], stop=lambda: next(calls))
    assert [len(r) for r in part] == [2, 1]  # stopped before the third batch: images 0 and 1 are whole


@pytest.mark.parametrize("crops", ["cv2", "torch"])
def test_prepare_takes_images_as_tensors(sensitive, body, crops):
    """An image decoded into a tensor (as nvJPEG leaves it on the GPU; here on the CPU) gives
    exactly the estimates of the same pixels as a numpy array."""
    eng = RegressionEngine(sensitive, body, batch_size=4, crops=crops)
    tensors = [(torch.from_numpy(im.copy()), bx) for im, bx in ENGINE_CASES]
    _exactly_equal(_run(eng), _run(eng, tensors))
    p = eng.prepare(tensors[0][0], [PersonBox(np.array(tensors[0][1][0]))])
    assert p.image_wh == (320, 240)
    if crops == "torch":  # a tensor already on the engine's device is kept, not copied
        assert p.image is tensors[0][0]
    assert eng.image_device is None  # (CPU: the loader decodes on the host)


# --------------------------------------------------------------------------- CUDA

@CUDA
def test_crop_batch_on_cuda_matches_cpu():
    index, rois = _cases()
    A = G.crop_affine(rois, (256, 192))
    cpu = G.crop_batch(IMAGES, index, A, (256, 192))
    pinned = [torch.from_numpy(im).pin_memory() for im in IMAGES]
    gpu = G.crop_batch(pinned, index, A, (256, 192), device="cuda")
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-2, rtol=0)


@CUDA
def test_engine_on_cuda_defaults_and_matches_cpu(sensitive, body):
    eng = RegressionEngine(sensitive, body, device="cuda")
    s = eng.settings()
    assert (s["precision"], s["crops"], s["channels_last"], s["backbone_chunk"]) == ("bf16", "torch", True, 0)
    ref = _run(RegressionEngine(sensitive, body, device="cpu", precision="fp32"))
    fp32 = _run(RegressionEngine(sensitive, body, device="cuda", precision="fp32"))
    # the torch crops (CPU: cams 1.2e-3, rotations 3e-3, vertices 3 mm) plus TF32 convolutions
    # (10-bit mantissa, ~1/8 of bf16's error)
    _compare(ref, fp32, cams=1e-2, rot=1.5e-2, betas=2e-2, verts=1e-2, cam_t=1e-2)
    _compare(ref, _run(eng), cams=0.06, rot=0.08, betas=0.06, verts=0.05, cam_t=0.025)
    assert RegressionEngine(sensitive, body, device="cuda", batch_size="auto").batch_size >= 1


@CUDA
def test_staging_on_cuda_changes_nothing(sensitive, body):
    """On CUDA the staged copies run on a side stream from pinned memory: same numbers as
    without staging (bit for bit: the same kernels on the same inputs)."""
    for crops in ("cv2", "torch"):
        on = RegressionEngine(sensitive, body, device="cuda", precision="fp32", batch_size=2, crops=crops)
        off = RegressionEngine(sensitive, body, device="cuda", precision="fp32", batch_size=2, crops=crops,
                               overlap=False)
        assert on.copy_stream is not None and off.copy_stream is None
        _exactly_equal(_run(on), _run(off))
    eng = RegressionEngine(sensitive, body, device="cuda", precision="fp32", batch_size=2)
    assert eng.image_device == torch.device("cuda")
    on_gpu = [(torch.from_numpy(im.copy()).cuda(), bx) for im, bx in ENGINE_CASES]
    _exactly_equal(_run(eng), _run(eng, on_gpu))
