"""End to end: ``hmrcli infer`` with a synthetic checkpoint, boxes and the body models."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hmrcli import geometry as G
from hmrcli.cli import app

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"
runner = CliRunner()


@pytest.fixture()
def photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(SAMPLES / "astronaut.png", d / "astronaut.png")
    shutil.copy(SAMPLES / "grace_hopper.jpg", d / "grace hopper ü.jpg")
    (d / "broken.jpg").write_bytes(b"this is not a jpeg")
    boxes = tmp_path / "boxes.jsonl"
    recs = [
        {"schema": "hmrcli.detections/1", "path": str(d / "astronaut.png"), "width": 512, "height": 512,
         "persons": [{"box_xyxy": [150, 20, 420, 511], "score": 0.9}, {"box_xyxy": [10, 300, 120, 500], "score": 0.5}]},
        {"schema": "hmrcli.detections/1", "path": str(d / "grace hopper ü.jpg"), "width": 512, "height": 600,
         "persons": [{"box_xyxy": [60, 40, 460, 600], "score": 0.8}]},
        {"schema": "hmrcli.detections/1", "path": str(d / "broken.jpg"), "width": 1, "height": 1, "persons": []},
    ]
    boxes.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return d, boxes


def _obj_vertices(path):
    """OBJ 'v' lines as written (trimesh's loader drops unreferenced vertices)."""
    return np.array([[float(x) for x in line.split()[1:4]] for line in path.read_text().splitlines()
                     if line.startswith("v ")])


def _run(args):
    return runner.invoke(app, ["infer", *args, "--json"])


def test_infer_writes_consistent_cameras_and_meshes(constant_checkpoint, photos, fake_smpl_dir, tmp_path):
    d, boxes = photos
    out = tmp_path / "out"
    r = _run([str(d), "--checkpoint", str(constant_checkpoint), "--boxes", str(boxes), "--out", str(out),
              "--body-model", "smpl", "--smpl-dir", str(fake_smpl_dir), "--mesh-format", "obj,ply", "-b", "2"])
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    summary = lines[-1]
    assert summary["done"] == 2 and summary["failed"] == 1 and summary["persons"] == 3, r.output
    assert r.exit_code == 1  # some failed
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["file"].endswith("broken.jpg") and errors[0]["stage"] == "read"

    for name, n in (("astronaut.png", 2), ("grace hopper ü.jpg", 1)):
        res = json.loads((out / name / "result.json").read_text())
        assert res["schema"] == "hmrcli.result/1" and res["persons"] == n
        for k in range(n):
            cam = json.loads((out / name / f"person_{k:02d}.camera.json").read_text())
            assert cam["schema"] == "hmrcli.camera/1" and len(cam["rois"]) == 5
            w, h = cam["image"]["width"], cam["image"]["height"]
            roi0 = cam["rois"][0]
            t = G.local_to_full(np.array(roi0["cam_local"]), np.array(roi0["box_cxcyb"]), np.array([w, h], float),
                                cam["focal_px"])
            np.testing.assert_allclose(cam["t"], t, rtol=1e-12)
            # ... which is CLIFF's conversion, written out: bs = b s, t = (tx + 2 (cx - W/2) / bs,
            # ty + 2 (cy - H/2) / bs, 2 f / bs)
            (s, tx, ty), (cx0, cy0, b0) = roi0["cam_local"], roi0["box_cxcyb"]
            bs = b0 * s
            np.testing.assert_allclose(cam["t"], [tx + 2 * (cx0 - w / 2) / bs, ty + 2 * (cy0 - h / 2) / bs,
                                                  2 * np.hypot(w, h) / bs], rtol=1e-9)
            np.testing.assert_allclose(roi0["cam_local"], [0.9, 0, 0], atol=1e-6)
            np.testing.assert_allclose(cam["focal_px"], np.hypot(w, h))
            # the written mesh, re-projected with the written K, R, t, lands in the person's crop box
            import trimesh

            verts = _obj_vertices(out / name / f"person_{k:02d}.obj")
            ply = trimesh.load(out / name / f"person_{k:02d}.ply", process=False)
            assert len(verts) == 6890  # every vertex kept, in the body model's order
            np.testing.assert_allclose(verts, ply.vertices, atol=1e-6)
            Xc = verts @ np.array(cam["mesh"]["R"]).T + np.array(cam["mesh"]["t"])
            assert (Xc[:, 2] > 0).all()
            uv = G.project(Xc, np.array(cam["K"]))
            cx, cy, b = roi0["box_cxcyb"]
            assert (np.abs(uv[:, 0] - cx) <= 0.375 * b * 1.05).all()
            assert (np.abs(uv[:, 1] - cy) <= 0.5 * b * 1.05).all()
            # the body spans a good part of the box (not a dot)
            assert np.ptp(uv[:, 1]) > 0.5 * b
            # upright: the fake model's head vertices (owner joint 15) project above its ankles' (7, 8)
            assert uv[15::24, 1].mean() < uv[7::24, 1].mean() - 0.3 * b
            p = np.load(out / name / f"person_{k:02d}.params.npz")
            assert p["rotmats"].shape == (24, 3, 3) and p["betas"].shape == (10,) and p["body_pose"].shape == (69,)
            np.testing.assert_allclose(p["transl"], cam["t"])
            assert str(p["body_model"]) == "smpl" and bool(p["betas_applied"])


def test_rerun_skips_and_overwrite_redoes(constant_checkpoint, photos, fake_smpl_dir, tmp_path):
    d, boxes = photos
    out = tmp_path / "out"
    args = [str(d / "astronaut.png"), "--checkpoint", str(constant_checkpoint), "--boxes", str(boxes), "--out", str(out),
            "--body-model", "smpl", "--smpl-dir", str(fake_smpl_dir), "--mesh-frame", "model"]
    r = _run(args)
    assert r.exit_code == 0, r.output
    first = (out / "astronaut.png" / "person_00.obj").stat().st_mtime_ns
    r = _run(args)
    assert json.loads(r.stdout.strip().splitlines()[-1])["skipped"] == 1
    assert (out / "astronaut.png" / "person_00.obj").stat().st_mtime_ns == first
    r = _run(args + ["--overwrite"])
    assert json.loads(r.stdout.strip().splitlines()[-1])["done"] == 1
    cam = json.loads((out / "astronaut.png" / "person_00.camera.json").read_text())
    assert cam["mesh"]["frame"] == "model" and cam["mesh"]["t"] == cam["t"]
    assert not list(out.rglob("*.tmp"))


def test_free_body_model_without_boxes(constant_checkpoint, tmp_path):
    out = tmp_path / "out"
    r = _run([str(SAMPLES / "astronaut.png"), "--checkpoint", str(constant_checkpoint), "--out", str(out),
              "--body-model", "free", "--detector", "whole-image"])
    assert r.exit_code == 0, r.output
    cam = json.loads((out / "astronaut.png" / "person_00.camera.json").read_text())
    assert cam["person"]["box_source"] == "whole-image"
    assert cam["person"]["box_xyxy"] == [-0.5, -0.5, 511.5, 511.5]
    assert cam["body_model"]["name"] == "free" and cam["body_model"]["betas_applied"] is False
    assert len(_obj_vertices(out / "astronaut.png" / "person_00.obj")) > 6000


def test_usage_errors(constant_checkpoint, tmp_path):
    r = _run([str(SAMPLES / "astronaut.png"), "--out", str(tmp_path), "--engine", "regress"])
    assert r.exit_code == 2 and "--checkpoint" in r.output
    r = _run([str(SAMPLES / "astronaut.png"), "--out", str(tmp_path), "--engine", "nope"])
    assert r.exit_code == 2 and "--engine" in r.output
    r = _run([str(SAMPLES / "astronaut.png"), "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "nope.pt" in r.output
    r = _run([str(SAMPLES / "astronaut.png"), "--checkpoint", str(constant_checkpoint), "--precision", "fp16",
              "--device", "cpu", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "fp16" in r.output
    bad = tmp_path / "boxes.jsonl"
    bad.write_text('{"path": "x.jpg", "persons": [{"box_xyxy": [5, 5, 1, 1]}]}\n')
    r = _run([str(SAMPLES / "astronaut.png"), "--checkpoint", str(constant_checkpoint), "--boxes", str(bad),
              "--out", str(tmp_path)])
    assert r.exit_code == 2 and "boxes.jsonl:1" in r.output


def test_python_api_image_in_people_out(constant_checkpoint):
    import hmrcli
    from hmrcli.api import estimate_people
    from hmrcli.sources import read_image

    net = hmrcli.load_regressor(constant_checkpoint)
    img = read_image(SAMPLES / "astronaut.png")
    people = estimate_people(img, [[150, 20, 420, 511], [10, 300, 120, 500]], net, hmrcli.load_body_model("free"))
    assert len(people) == 2
    single = estimate_people(img, [[10, 300, 120, 500]], net, hmrcli.load_body_model("free"))
    np.testing.assert_allclose(single[0].cam_t, people[1].cam_t, rtol=1e-6)
    np.testing.assert_allclose(single[0].vertices_model, people[1].vertices_model, atol=1e-5)
    assert estimate_people(img, np.zeros((0, 4)), net) == []


def test_infer_detects_persons_without_boxes(constant_checkpoint, tmp_path, monkeypatch):
    import hmrcli.detect as D
    from hmrcli.detect.movenet_backend import MoveNetDetector
    from hmrcli.sources import read_image

    # where mmdet with weights is installed auto would pick it: say it cannot run, so that this
    # test sees the offline default on every machine instead of being skipped on some
    monkeypatch.setattr(D, "_mmdet_problem", lambda: "no weights (this test)")
    out = tmp_path / "out"
    r = _run([str(SAMPLES / "astronaut.png"), "--checkpoint", str(constant_checkpoint), "--out", str(out),
              "--body-model", "free"])
    assert r.exit_code == 0, r.output
    assert "movenet" in r.stderr and "every person, up to 6 per pass" in r.stderr
    assert "mmdet: no weights (this test)" in r.stderr  # auto says why it passed over mmdet
    cam = json.loads((out / "astronaut.png" / "person_00.camera.json").read_text())
    assert cam["person"]["box_source"] == "movenet:multipose-lightning@256+512"
    with MoveNetDetector() as det:
        (want,) = det.detect([read_image(SAMPLES / "astronaut.png")])[0]
    np.testing.assert_allclose(cam["person"]["box_xyxy"], want.box_xyxy)
    assert cam["person"]["score"] == pytest.approx(want.score)


def test_infer_boxes_from_stdin(constant_checkpoint, tmp_path):
    out = tmp_path / "out"
    rec = {"schema": "hmrcli.detections/1", "path": str(SAMPLES / "astronaut.png"), "width": 512, "height": 512,
           "persons": [{"box_xyxy": [150, 20, 420, 511], "score": 0.9, "detector": "mine"}]}
    r = runner.invoke(app, ["infer", "--boxes", "-", "--checkpoint", str(constant_checkpoint), "--out", str(out),
                            "--body-model", "free", "--json"], input=json.dumps(rec) + "\n")
    assert r.exit_code == 0, r.output
    cam = json.loads((out / "astronaut.png" / "person_00.camera.json").read_text())
    assert cam["person"]["box_xyxy"] == [150, 20, 420, 511] and cam["person"]["box_source"] == "mine"
    assert "detector: boxes" in r.stderr
