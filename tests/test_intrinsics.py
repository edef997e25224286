"""``--intrinsics FILE`` / ``--principal-point``: parsing, lookup, and a calibrated camera honoured
end to end (the written mesh, projected with the written K, lands in the person's box)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hmrcli import geometry as G
from hmrcli.cli import app
from hmrcli.intrinsics import (
    IntrinsicsError,
    intrinsics_from_K,
    load_intrinsics,
    parse_principal_point,
)

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"
runner = CliRunner()
K_OFF = [[1145.0, 0.0, 300.0], [0.0, 1143.8, 200.0], [0.0, 0.0, 1.0]]  # H36M-like: off-centre, fx != fy by 0.1 %


def test_principal_point_parsing():
    assert parse_principal_point("512.5, 384") == (512.5, 384.0)
    for bad in ("512", "a,b", "1,2,3", "nan,3"):
        with pytest.raises(IntrinsicsError, match="principal"):
            parse_principal_point(bad)


def test_K_checks():
    f, c, note = intrinsics_from_K(K_OFF, "x")
    assert f == pytest.approx(np.sqrt(1145.0 * 1143.8)) and c == (300.0, 200.0) and "merged" in note
    with pytest.raises(IntrinsicsError, match="square pixels"):
        intrinsics_from_K([[1000, 0, 1], [0, 1100, 1], [0, 0, 1]], "x")
    with pytest.raises(IntrinsicsError, match="3x3"):
        intrinsics_from_K([[1, 0], [0, 1]], "x")
    with pytest.raises(IntrinsicsError, match="last row"):
        intrinsics_from_K([[1000, 0, 1], [0, 1000, 1], [0, 1, 1]], "x")
    with pytest.raises(IntrinsicsError, match="skew"):
        intrinsics_from_K([[1000, 5, 1], [0, 1000, 1], [0, 0, 1]], "x")
    with pytest.raises(IntrinsicsError, match="positive"):
        intrinsics_from_K([[-1000, 0, 1], [0, -1000, 1], [0, 0, 1]], "x")


def test_file_lookup_order(tmp_path):
    p = tmp_path / "k.json"
    p.write_text(json.dumps({"K": [[900, 0, 10], [0, 900, 20], [0, 0, 1]],
                             "images": {"a/x.jpg": {"K": K_OFF}, "b/y.jpg": {"K": [[800, 0, 1], [0, 800, 2], [0, 0, 1]]},
                                        "c/y.jpg": {"K": [[700, 0, 1], [0, 700, 2], [0, 0, 1]]}}}))
    t = load_intrinsics(p)
    assert t.lookup("a/x.jpg").principal == (300.0, 200.0)  # as given
    assert t.lookup("/somewhere/else/x.jpg").principal == (300.0, 200.0)  # unique file name
    assert t.lookup("b/y.jpg").focal == 800  # exact key beats the (ambiguous) name
    with pytest.raises(IntrinsicsError, match="several entries"):
        t.lookup("other/y.jpg")
    d = t.lookup("z.jpg")
    assert d.focal == 900 and d.principal == (10.0, 20.0) and "default K" in d.source
    # no default: an uncovered image is an error naming the file
    p.write_text(json.dumps({"images": {"a/x.jpg": {"K": K_OFF}}}))
    with pytest.raises(IntrinsicsError, match="no K for z.jpg"):
        load_intrinsics(p).lookup("z.jpg")
    for text, msg in (("{", "not valid JSON"), ("[]", "expected an object"), ('{"images": {"a": {}}}', "must be an object with 'K'")):
        p.write_text(text)
        with pytest.raises(IntrinsicsError, match=msg):
            load_intrinsics(p)
    with pytest.raises(IntrinsicsError, match="cannot read"):
        load_intrinsics(tmp_path / "missing.json")


def test_geometry_principal_point_round_trip():
    rng = np.random.default_rng(0)
    cam = np.c_[rng.uniform(0.5, 1.5, 20), rng.normal(0, 0.1, (20, 2))]
    boxes = np.c_[rng.uniform(100, 500, (20, 2)), rng.uniform(50, 300, 20)]
    wh, c = np.array([640.0, 480.0]), np.array([300.0, 200.0])
    t = G.local_to_full(cam, boxes, wh, 1000.0, principal=c)
    np.testing.assert_allclose(G.full_to_local(t, boxes, wh, 1000.0, principal=c), cam, atol=1e-9)
    # the box centre is where the root projects with the off-centre K (weak perspective about the axis)
    K = G.intrinsics(1000.0, 640.0, 480.0, c)
    uv = G.project(np.zeros((20, 1, 3)), K[None].repeat(20, 0), t=t)[:, 0]
    s_b = boxes[:, 2] * cam[:, 0] / 2  # pixels per metre in the crop's normalised units
    np.testing.assert_allclose(uv, boxes[:, :2] + cam[:, 1:] * s_b[:, None], rtol=1e-9)
    # bbox_info measures the box from the principal point
    info = G.bbox_info(boxes, wh, 1000.0, c)
    np.testing.assert_allclose(info[:, 0], (boxes[:, 0] - 300.0) / 1000.0 * 2.8)


def test_infer_honours_intrinsics_file(constant_checkpoint, fake_smpl_dir, tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(SAMPLES / "astronaut.png", d / "astronaut.png")
    boxes = tmp_path / "boxes.jsonl"
    box = [150.0, 20.0, 420.0, 511.0]
    boxes.write_text(json.dumps({"schema": "hmrcli.detections/1", "path": str(d / "astronaut.png"), "width": 512,
                                 "height": 512, "persons": [{"box_xyxy": box, "score": 0.9}]}) + "\n")
    kf = tmp_path / "cams.json"
    kf.write_text(json.dumps({"images": {"astronaut.png": {"K": K_OFF}}}))
    out = tmp_path / "out"
    r = runner.invoke(app, ["infer", str(d), "--checkpoint", str(constant_checkpoint), "--boxes", str(boxes),
                            "--out", str(out), "--body-model", "smpl", "--smpl-dir", str(fake_smpl_dir),
                            "--intrinsics", str(kf), "--json"])
    assert r.exit_code == 0, r.output
    cam = json.loads((out / "astronaut.png" / "person_00.camera.json").read_text())
    f = np.sqrt(1145.0 * 1143.8)
    np.testing.assert_allclose(cam["K"], [[f, 0, 300], [0, f, 200], [0, 0, 1]])
    assert cam["K_source"].startswith(f"--intrinsics {kf}") and "merged" in cam["K_source"]
    assert cam["principal_point_px"] == [300.0, 200.0]
    roi0 = cam["rois"][0]
    np.testing.assert_allclose(roi0["bbox_info"][0], (roi0["box_cxcyb"][0] - 300.0) / f * 2.8, rtol=1e-5)
    # the mesh projected with the written K lands in the person's box (not shifted by the
    # principal point's offset from the image centre: (256 - 300, 256 - 200) px)
    verts = np.array([[float(x) for x in ln.split()[1:4]] for ln in
                      (out / "astronaut.png" / "person_00.obj").read_text().splitlines() if ln.startswith("v ")])
    uv = G.project(verts, np.array(cam["K"]))
    cx, cy, b = roi0["box_cxcyb"]
    assert (np.abs(uv[:, 0] - cx) <= 0.375 * b * 1.05).all() and (np.abs(uv[:, 1] - cy) <= 0.5 * b * 1.05).all()
    assert abs(np.median(uv[:, 0]) - cx) < 0.1 * b
    # --principal-point with --focal is recorded the same way; --intrinsics excludes them
    r2 = runner.invoke(app, ["infer", str(d), "--checkpoint", str(constant_checkpoint), "--boxes", str(boxes),
                             "--out", str(tmp_path / "o2"), "--focal", "1000", "--principal-point", "300,200", "--json"])
    assert r2.exit_code == 0, r2.output
    cam2 = json.loads((tmp_path / "o2" / "astronaut.png" / "person_00.camera.json").read_text())
    np.testing.assert_allclose(cam2["K"], [[1000, 0, 300], [0, 1000, 200], [0, 0, 1]])
    assert cam2["K_source"] == "--focal, principal point --principal-point 300,200"
    r3 = runner.invoke(app, ["infer", str(d), "--checkpoint", str(constant_checkpoint), "--boxes", str(boxes),
                             "--out", str(tmp_path / "o3"), "--focal", "1000", "--intrinsics", str(kf)])
    assert r3.exit_code == 2 and "leave out --focal" in r3.output


def test_image_not_in_intrinsics_file_is_an_error(constant_checkpoint, tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(SAMPLES / "astronaut.png", d / "astronaut.png")
    shutil.copy(SAMPLES / "cameraman.png", d / "cameraman.png")
    kf = tmp_path / "cams.json"
    kf.write_text(json.dumps({"images": {"astronaut.png": {"K": K_OFF}}}))
    out = tmp_path / "out"
    r = runner.invoke(app, ["infer", str(d), "--checkpoint", str(constant_checkpoint), "--detector", "whole-image",
                            "--out", str(out), "--intrinsics", str(kf), "--json"])
    assert r.exit_code == 1, r.output
    errs = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["stage"], Path(e["file"]).name) for e in errs] == [("camera", "cameraman.png")]
    assert "no K for" in errs[0]["message"]
    assert (out / "astronaut.png" / "person_00.obj").is_file()
