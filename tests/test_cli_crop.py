"""``hmrcli crop``: the written crops and geometry JSON re-derived with hmrcli.geometry."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from hmrcli import geometry as G
from hmrcli.cli import app
from hmrcli.sources import read_image

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"
runner = CliRunner()


@pytest.fixture()
def photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(SAMPLES / "astronaut.png", d / "astronaut.png")
    shutil.copy(SAMPLES / "grace_hopper.jpg", d / "grace hopper ü.jpg")
    return d


def _detections(d):
    return [
        {"schema": "hmrcli.detections/1", "path": str(d / "astronaut.png"), "width": 512, "height": 512,
         "persons": [{"box_xyxy": [37.5, 1.5, 358.25, 511.0], "score": 0.9, "class": "person", "detector": "t"},
                     # partly outside the image: the crop's outside is black
                     {"box_xyxy": [400.0, 300.0, 560.0, 620.0], "score": 0.4, "class": "person", "detector": "t"}]},
        {"schema": "hmrcli.detections/1", "path": str(d / "grace hopper ü.jpg"), "width": 512, "height": 600,
         "persons": [{"box_xyxy": [60.0, 40.0, 460.0, 599.0], "score": None, "class": "person", "detector": "t"}]},
    ]


def _check_person(dirpath, k, image, det, num_rois, aspect, focal, rescale=None):
    rec = json.loads((dirpath / f"person_{k:02d}.crops.json").read_text())
    assert rec["schema"] == "hmrcli.crops/1"
    h_img, w_img = image.shape[:2]
    assert rec["image"]["width"] == w_img and rec["image"]["height"] == h_img
    assert rec["person"]["index"] == k and rec["person"]["box_xyxy"] == det["box_xyxy"]
    assert rec["person"]["score"] == det["score"]
    crop_hw = G.crop_size(aspect)
    assert (rec["crop"]["height"], rec["crop"]["width"]) == crop_hw and rec["crop"]["aspect"] == aspect
    f = focal if focal else np.hypot(w_img, h_img)
    assert rec["focal_px"] == pytest.approx(f, rel=1e-15)
    # re-derive everything with the geometry module
    box = G.box_from_xyxy(np.array(det["box_xyxy"]), aspect=aspect, rescale=rescale)
    rois = G.make_rois(box, num_rois)
    affines = G.crop_affine(rois, crop_hw)
    info = G.bbox_info(rois, (w_img, h_img), f)
    np.testing.assert_allclose(rec["crop_box_cxcyb"], box, rtol=1e-15)
    assert len(rec["rois"]) == num_rois
    for m, roi in enumerate(rec["rois"]):
        assert roi["index"] == m and roi["file"] == f"person_{k:02d}.roi{m}.png"
        np.testing.assert_allclose(roi["box_cxcyb"], rois[m], rtol=1e-15)
        np.testing.assert_allclose(roi["affine"], affines[m], rtol=1e-15, atol=1e-12)
        np.testing.assert_allclose(roi["bbox_info"], info[m], rtol=1e-15, atol=1e-15)
        png = cv2.cvtColor(cv2.imread(str(dirpath / roi["file"]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        want = G.crop_image_np(image, affines[m], crop_hw)
        assert png.shape == (*crop_hw, 3)
        np.testing.assert_array_equal(png, want)  # lossless PNG of exactly the engine's crop
        # the JSON's affine maps the box centre to the crop's (w/2, h/2)
        c = np.array(roi["affine"]) @ np.array([roi["box_cxcyb"][0], roi["box_cxcyb"][1], 1.0])
        np.testing.assert_allclose(c, [crop_hw[1] / 2, crop_hw[0] / 2], atol=1e-9)
    assert not (dirpath / f"person_{k:02d}.roi{num_rois}.png").exists()
    return rec


def test_crop_from_stdin_matches_geometry(photos, tmp_path):
    out = tmp_path / "crops"
    text = "".join(json.dumps(r) + "\n" for r in _detections(photos))
    r = runner.invoke(app, ["crop", "-", "--out", str(out), "--json"], input=text)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[-1]["schema"] == "hmrcli.summary/1" and lines[-1]["persons"] == 3 and lines[-1]["crops"] == 15
    assert "detector: boxes" in r.stderr
    for rec in _detections(photos):
        name = Path(rec["path"]).name
        image = read_image(rec["path"])
        for k, det in enumerate(rec["persons"]):
            _check_person(out / name, k, image, det, 5, "rect", None)
    # the part of RoI 1 of the second person that lies outside the image is black
    png = cv2.imread(str(out / "astronaut.png" / "person_01.roi1.png"))
    assert png[-20:, -20:].max() == 0


def test_crop_options_square_focal_num_rois(photos, tmp_path):
    det_file = tmp_path / "det.jsonl"
    det_file.write_text("".join(json.dumps(r) + "\n" for r in _detections(photos)[1:]))
    out = tmp_path / "c"
    r = runner.invoke(app, ["crop", str(det_file), "--out", str(out), "--num-rois", "3", "--crop", "square",
                            "--focal", "800", "--rescale", "1.3", "--no-json"])
    assert r.exit_code == 0, r.output
    rec = _detections(photos)[1]
    rec_json = _check_person(out / "grace hopper ü.jpg", 0, read_image(rec["path"]), rec["persons"][0], 3,
                             "square", 800.0, rescale=1.3)
    assert rec_json["focal_source"] == "--focal" and rec_json["crop"]["box_rescale"] == 1.3
    for bad in (["--num-rois", "6"], ["--num-rois", "0"], ["--crop", "wide"], ["--focal", "-1"]):
        r = runner.invoke(app, ["crop", str(det_file), "--out", str(out), *bad])
        assert r.exit_code == 2, bad


def test_detect_pipe_crop_on_images(photos, tmp_path):
    """`hmrcli detect IMAGES | hmrcli crop - --out DIR`, and crop running detection itself."""
    r = runner.invoke(app, ["detect", str(photos), "-d", "whole-image"])
    assert r.exit_code == 0, r.output
    out1 = tmp_path / "piped"
    r1 = runner.invoke(app, ["crop", "-", "-o", str(out1), "--num-rois", "2", "--json"], input=r.stdout)
    assert r1.exit_code == 0, r1.output
    out2 = tmp_path / "direct"
    r2 = runner.invoke(app, ["crop", str(photos), "-o", str(out2), "-d", "whole-image", "--num-rois", "2", "--json"])
    assert r2.exit_code == 0, r2.output
    files1 = sorted(p.relative_to(out1) for p in out1.rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(out2) for p in out2.rglob("*") if p.is_file())
    assert files1 == files2 and len(files1) == 2 * 3
    for f in files1:
        if f.suffix == ".png":
            assert (out1 / f).read_bytes() == (out2 / f).read_bytes()
    image = read_image(photos / "astronaut.png")
    _check_person(out2 / "astronaut.png", 0, image, {"box_xyxy": [-0.5, -0.5, 511.5, 511.5], "score": None}, 2,
                  "rect", None)
    assert not list(tmp_path.rglob("*.tmp"))


def test_crop_errors(photos, tmp_path):
    recs = _detections(photos)
    recs[1]["path"] = str(photos / "missing.jpg")
    out = tmp_path / "o"
    r = runner.invoke(app, ["crop", "-", "-o", str(out), "--json"], input="".join(json.dumps(x) + "\n" for x in recs))
    assert r.exit_code == 1
    errs = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errs) == 1 and errs[0]["file"].endswith("missing.jpg") and errs[0]["stage"] == "read"
    assert (out / "astronaut.png" / "person_01.crops.json").is_file()
    r = runner.invoke(app, ["crop", "-", "-o", str(out)], input="{not json\n")
    assert r.exit_code == 2 and "<stdin>:1: not JSON" in r.stderr
