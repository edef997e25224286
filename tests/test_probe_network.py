"""Crops -> network -> camera, end to end, with networks whose answers are predicted from the
image alone (tests/_probe.py re-derives the crop boxes, RoIs, crops, RGB order, H x W layout,
normalisation, bbox_info and CLIFF's camera conversion without hmrcli's geometry code).

* :class:`_probe.LinearProbe` (a fixed linear read-out of each RoI's pixels) through
  :class:`hmrcli.engine.regress.RegressionEngine`: persons of two images batched across the
  images, a given focal length and principal point, single == batched;
* the check fails when the crops are BGR, H/W swapped, in the wrong RoI order, normalised
  wrongly or the bbox_info is mis-ordered (each break patched into hmrcli's geometry here);
* ``hmrcli infer`` with a saved, input-sensitive Multi-RoI checkpoint (random weights, heads
  at full gain): the camera JSON and parameters equal the network run on our own crops.
"""

from __future__ import annotations

import json

import _probe as P
import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import hmrcli.geometry as G
from hmrcli.body import load_body_model
from hmrcli.cli import app
from hmrcli.engine.regress import PersonBox, RegressionEngine

CFG = P.small_config()

#: (image, person boxes xyxy); RoIs reach past the image borders (zero padding)
CASES = [
    (P.quadrant_image(), [[60.0, 30.0, 200.0, 220.0], [180.0, 80.0, 300.0, 230.0]]),
    (P.portrait_image(), [[20.0, 10.0, 120.0, 170.0]]),
]


@pytest.fixture(scope="module")
def body(fake_smpl_dir):
    return load_body_model("smpl", smpl_dir=fake_smpl_dir)  # applies the probe's betas


def _run_engine(engine, cases, focal=None, principal=None):
    prepared = []
    for image, boxes in cases:
        persons = [PersonBox(np.array(b)) for b in boxes]
        args = (image, persons, focal) if principal is None else (image, persons, focal, principal)
        prepared.append((engine.prepare(*args), persons))
    return engine.run(prepared)


def check_against_probe(results, cases, body, focal=None, principal=None) -> None:
    """Every estimate equals what the probe answers for our own crops of the image."""
    assert [len(r) for r in results] == [len(boxes) for _, boxes in cases]
    for (image, boxes), ests in zip(cases, results):
        for xyxy, est in zip(boxes, ests):
            inp = P.expected_inputs(image, xyxy, CFG, focal, principal)
            feats = np.stack([P.features_np(x) for x in inp.x])
            want = P.probe_outputs_np(feats, inp.bbox_info)
            np.testing.assert_allclose(est.crop_box, inp.box, rtol=1e-12, err_msg="crop box")
            np.testing.assert_allclose(est.rois, inp.rois, rtol=1e-12, err_msg="RoI boxes")
            np.testing.assert_allclose(est.bbox_info, inp.bbox_info, atol=1e-6, err_msg="bbox_info")
            # per RoI: the probe's local camera, i.e. crop content, channels, layout, order
            np.testing.assert_allclose(est.cams_local, want["cams"], atol=2e-5, err_msg="cams_local (per RoI)")
            # the person: RoI 0's pose and shape; the full camera from RoI 0 (CLIFF)
            np.testing.assert_allclose(est.betas, want["betas"][0], atol=2e-5, err_msg="betas (RoI 0)")
            np.testing.assert_allclose(est.rotmats, want["rotmats"][0], atol=2e-5, err_msg="rotmats (RoI 0)")
            t = P.cliff_full_camera(want["cams"][0], inp.rois[0], inp.focal, inp.principal)
            np.testing.assert_allclose(est.cam_t, t, rtol=1e-4, err_msg="full camera t")
            np.testing.assert_allclose(est.K, inp.K, rtol=1e-12, err_msg="K")
            assert est.focal == pytest.approx(inp.focal, rel=1e-12) and est.image_wh == inp.wh
            # the body model got that pose and those betas
            assert est.betas_applied
            out = body(torch.from_numpy(want["rotmats"][:1]), torch.from_numpy(want["betas"][:1]))
            np.testing.assert_allclose(est.vertices_model, out.vertices[0].numpy(), atol=1e-4,
                                       err_msg="vertices_model")


def test_probe_through_the_engine(body):
    engine = RegressionEngine(P.LinearProbe(CFG), body, batch_size=2)
    results = _run_engine(engine, CASES)
    # three persons in two network calls, batched across the images
    assert engine.model.calls == [((2, 5, 3, 64, 48), (2, 5, 3)), ((1, 5, 3, 64, 48), (1, 5, 3))]
    check_against_probe(results, CASES, body)
    # the RoIs see different pixels (else a wrong RoI order could not show)
    cams = results[0][0].cams_local
    assert np.ptp(cams[:, 0]) > 0.05 and np.ptp(cams[:, 1]) > 0.05
    # one person at a time gives the same numbers as the batch
    single = RegressionEngine(P.LinearProbe(CFG), body, batch_size=1)
    one = _run_engine(single, [(CASES[0][0], CASES[0][1][1:])])[0][0]
    np.testing.assert_allclose(one.cam_t, results[0][1].cam_t, rtol=1e-6)
    np.testing.assert_allclose(one.vertices_model, results[0][1].vertices_model, atol=1e-6)


def test_probe_with_focal_and_principal_point(body):
    engine = RegressionEngine(P.LinearProbe(CFG), body, batch_size=8)
    results = _run_engine(engine, CASES[:1], focal=400.0, principal=(150.0, 130.0))
    check_against_probe(results, CASES[:1], body, focal=400.0, principal=(150.0, 130.0))


def test_api_estimate_people_matches_the_probe(body):
    from hmrcli.api import estimate_people

    image, boxes = CASES[0]
    people = estimate_people(image, boxes, P.LinearProbe(CFG), body, focal=500.0)
    check_against_probe([people], [(image, boxes)], body, focal=500.0)


# --------------------------------------------------------------------------- breaks are caught

def _patch(monkeypatch, name, wrap):
    """Replace hmrcli.geometry.<name> (what the engine calls) by ``wrap(original)``."""
    orig = getattr(G, name)
    fn = wrap(orig)
    monkeypatch.setattr(G, name, fn)
    import hmrcli.engine.regress as R

    if hasattr(R, name):  # in case the engine imports the name itself
        monkeypatch.setattr(R, name, fn)


BREAKS = {
    # crops handed on in BGR order
    "bgr": ("crop_image_np", lambda f: lambda *a, **k: np.ascontiguousarray(f(*a, **k)[..., ::-1])),
    # the network gets (W, H) crops: H and W swapped by the permute
    "hw_swapped": ("normalize_crops", lambda f: lambda x, *a, **k: f(x, *a, **k).transpose(-1, -2)),
    # the crops reach the network in the reverse RoI order (RoI boxes and bbox_info stay right)
    "roi_order": ("normalize_crops", lambda f: lambda x, *a, **k: f(x, *a, **k).flip(1)),
    # pixel / 255 without the ImageNet mean and std
    "no_mean_std": ("normalize_crops", lambda f: lambda x, *a, **k: x / 255.0),
    # the ImageNet statistics in BGR order
    "bgr_statistics": ("normalize_crops",
                       lambda f: lambda x, *a, **k: (x / 255.0 - torch.tensor(P.MEAN[::-1].copy(), dtype=x.dtype)
                                                     .view(3, 1, 1)) / torch.tensor(P.STD[::-1].copy(),
                                                                                    dtype=x.dtype).view(3, 1, 1)),
    # bbox_info computed in the reverse RoI order
    "bbox_info_order": ("bbox_info", lambda f: lambda *a, **k: f(*a, **k)[..., ::-1, :]),
}


@pytest.mark.parametrize("brk", sorted(BREAKS))
def test_the_probe_check_catches_a_broken_engine(brk, body, monkeypatch):
    name, wrap = BREAKS[brk]
    _patch(monkeypatch, name, wrap)
    engine = RegressionEngine(P.LinearProbe(CFG), body, batch_size=2)
    results = _run_engine(engine, CASES)
    # the first check that sees it: bbox_info itself, else the per-RoI cameras (the crops)
    with pytest.raises(AssertionError, match="bbox_info" if brk == "bbox_info_order" else "cams_local"):
        check_against_probe(results, CASES, body)


# --------------------------------------------------------------------------- hmrcli infer


@pytest.fixture(scope="module")
def sensitive_checkpoint(tmp_path_factory):
    """A saved input-sensitive Multi-RoI (:func:`_probe.small_checkpoint`); the model itself,
    run on our own crops, computes the expected answer."""
    return P.small_checkpoint(tmp_path_factory.mktemp("sensitive") / "sensitive")


def test_infer_with_a_saved_sensitive_checkpoint(sensitive_checkpoint, tmp_path):
    path, model = sensitive_checkpoint
    photos = tmp_path / "photos"
    photos.mkdir()
    recs = []
    for k, (image, boxes) in enumerate(CASES):
        p = photos / f"img{k}.png"
        cv2.imwrite(str(p), image[..., ::-1])  # stored BGR by OpenCV: the file is the RGB image
        recs.append({"schema": "hmrcli.detections/1", "path": str(p), "width": image.shape[1],
                     "height": image.shape[0], "persons": [{"box_xyxy": b, "score": 0.9} for b in boxes]})
    boxes_file = tmp_path / "boxes.jsonl"
    boxes_file.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["infer", "--boxes", str(boxes_file), "--checkpoint", str(path), "--out", str(out),
                                 "--body-model", "free", "--device", "cpu", "--json", "-q"])
    assert r.exit_code == 0, r.output
    n = 0
    for k, (image, boxes) in enumerate(CASES):
        for j, xyxy in enumerate(boxes):
            cam = json.loads((out / f"img{k}.png" / f"person_{j:02d}.camera.json").read_text())
            par = np.load(out / f"img{k}.png" / f"person_{j:02d}.params.npz")
            inp = P.expected_inputs(image, xyxy, CFG)
            with torch.no_grad():
                want = model(*P.network_input(inp))
            cams = want.cams[0].double().numpy()
            np.testing.assert_allclose([roi["box_cxcyb"] for roi in cam["rois"]], inp.rois, rtol=1e-12)
            np.testing.assert_allclose([roi["bbox_info"] for roi in cam["rois"]], inp.bbox_info, atol=1e-6)
            np.testing.assert_allclose([roi["cam_local"] for roi in cam["rois"]], cams, rtol=1e-4, atol=1e-5)
            t = P.cliff_full_camera(cams[0], inp.rois[0], inp.focal, inp.principal)
            np.testing.assert_allclose(cam["t"], t, rtol=1e-4)
            np.testing.assert_allclose(cam["K"], inp.K, rtol=1e-12)
            assert cam["focal_px"] == pytest.approx(np.hypot(*inp.wh), rel=1e-12)
            np.testing.assert_allclose(par["rotmats"], want.person_rotmats[0].double().numpy(), atol=1e-4)
            np.testing.assert_allclose(par["betas"], want.person_betas[0].double().numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(par["transl"], cam["t"])
            n += 1
    assert n == 3


def test_single_equals_batched_with_a_sensitive_network(sensitive_checkpoint, body):
    """With a network whose outputs depend on the crops, a person alone and the same person in
    a batch of three (two images) give the same estimate, and each equals the network on our
    own crops of that person (no person's crops leak into another's)."""
    _, model = sensitive_checkpoint
    model.config = CFG
    engine = RegressionEngine(model, body, batch_size=3)
    batched = _run_engine(engine, CASES)
    for (image, boxes), ests in zip(CASES, batched):
        for xyxy, est in zip(boxes, ests):
            alone = _run_engine(RegressionEngine(model, body, batch_size=1), [(image, [xyxy])])[0][0]
            np.testing.assert_allclose(alone.cam_t, est.cam_t, rtol=1e-5)
            np.testing.assert_allclose(alone.vertices_model, est.vertices_model, atol=1e-5)
            with torch.no_grad():
                want = model(*P.network_input(P.expected_inputs(image, xyxy, CFG)))
            np.testing.assert_allclose(est.cams_local, want.cams[0].double().numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(est.rotmats, want.person_rotmats[0].double().numpy(), atol=1e-4)
    # the three persons differ (else a mix-up could not show)
    assert np.abs(batched[0][0].rotmats - batched[0][1].rotmats).max() > 1e-2
    assert np.abs(batched[0][0].cams_local - batched[1][0].cams_local).max() > 1e-2
