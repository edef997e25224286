"""``hmrcli export``: re-export saved results (written here by hand, in infer's layout)."""

import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hmrcli.body import JOINT_NAMES, load_body_model
from hmrcli.cli import app
from hmrcli.export.glb import GLTF_FROM_OPENCV
from hmrcli.export.results import (
    PERSON_SCHEMA,
    ExportOptions,
    ResultsError,
    find_result_images,
    person_stems,
    read_person,
    run_export,
)

runner = CliRunner()
W, H = 320, 240
K = np.array([[300.0, 0.0, 159.5], [0.0, 300.0, 119.5], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def free():
    return load_body_model("free")


def _pose(seed, t):
    import roma

    rng = np.random.default_rng(seed)
    aa = rng.normal(scale=0.3, size=(24, 3))
    rot = roma.rotvec_to_rotmat(torch.from_numpy(aa)).numpy()
    rot[0] = np.diag([1.0, -1.0, -1.0]) @ rot[0]  # upright in the camera
    return rot, rng.normal(scale=0.5, size=10), np.asarray(t, dtype=np.float64)


def _write_person(d, k, rot, betas, t, image, body_model="free", betas_applied=True, drop=()):
    import roma

    aa = roma.rotmat_to_rotvec(torch.from_numpy(rot)).numpy()
    arrays = dict(global_orient=aa[0], body_pose=aa[1:].reshape(-1), betas=betas, transl=t, rotmats=rot,
                  cam_local=np.tile([0.9, 0.0, 0.0], (5, 1)), K=K, body_model=np.array(body_model),
                  betas_space=np.array("smpl"), betas_applied=np.array(betas_applied))
    for key in drop:
        arrays.pop(key)
    np.savez(d / f"person_{k:02d}.params.npz", **arrays)
    cam = {
        "schema": "hmrcli.camera/1",
        "image": {"path": str(image), "width": W, "height": H},
        "units": {"K": "pixels", "t": "metres", "boxes": "pixels"},
        "convention": "OpenCV pinhole camera ...",
        "K": K.tolist(), "R": np.eye(3).tolist(), "t": t.tolist(), "focal_px": 300.0,
        "focal_source": "--focal",
        "mesh": {"frame": "camera", "R": np.eye(3).tolist(), "t": [0.0, 0.0, 0.0], "note": "..."},
        "person": {"index": k, "box_xyxy": [10.0, 10.0, 100.0, 200.0], "score": 0.9, "box_source": "boxes",
                   "crop_box_cxcyb": [55.0, 105.0, 190.0]},
        "body_model": {"name": body_model, "gender": "neutral", "betas_applied": betas_applied, "betas_space": "smpl"},
        "hmrcli": "test",
    }
    (d / f"person_{k:02d}.camera.json").write_text(json.dumps(cam))


def make_results(root, image, persons, name="photos/a.png", **kw):
    d = root / name
    d.mkdir(parents=True)
    for k, (rot, betas, t) in enumerate(persons):
        _write_person(d, k, rot, betas, t, image, **kw)
    (d / "result.json").write_text(json.dumps({"schema": "hmrcli.result/1", "image": str(image),
                                               "persons": len(persons), "files": [], "mesh_frame": "camera"}))
    return d


@pytest.fixture()
def image(tmp_path):
    import cv2

    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), img[..., ::-1])
    return path, img


@pytest.fixture()
def results(tmp_path, image):
    persons = [_pose(0, [-0.45, 0.05, 5.0]), _pose(1, [0.5, 0.0, 6.0])]
    root = tmp_path / "res"
    make_results(root, image[0], persons)
    return root, persons


def _posed(body, rot, betas, t=None):
    out = body(torch.from_numpy(rot[None]), betas=torch.from_numpy(betas[None]))
    v = out.vertices[0].numpy()
    return v if t is None else v + t


def _obj_vertices(path):
    return np.array([[float(x) for x in line.split()[1:4]] for line in path.read_text().splitlines()
                     if line.startswith("v ")])


def test_find_images_and_persons(results, tmp_path):
    root, persons = results
    (tmp_path / "res" / "incomplete").mkdir()
    (tmp_path / "res" / "incomplete" / "person_00.params.npz").write_bytes(b"x")  # no result.json: ignored
    imgs = find_result_images(root)
    assert [n for n, _ in imgs] == ["photos/a.png"]
    assert person_stems(imgs[0][1]) == ["person_00", "person_01"]
    p = read_person(imgs[0][1], "person_01")
    assert p.rotmats.shape == (24, 3, 3) and p.body_model == "free" and p.gender == "neutral"
    assert np.allclose(p.transl, persons[1][2]) and "cam_local" in p.extra


@pytest.mark.parametrize("frame", ["camera", "model"])
def test_obj_ply_equal_the_body_model(results, free, tmp_path, frame):
    root, persons = results
    out = tmp_path / "out"
    s = run_export(root, ExportOptions(out=out, formats=("obj", "ply"), mesh_frame=frame))
    assert (s.done, s.failed, s.skipped, s.exit_code) == (2, 0, 0, 0)
    import trimesh

    for k, (rot, betas, t) in enumerate(persons):
        ref = _posed(free, rot, betas, t if frame == "camera" else None)
        obj = out / "photos/a.png" / f"person_{k:02d}.obj"
        assert np.abs(_obj_vertices(obj) - ref).max() < 1e-5
        assert f"hmrcli mesh frame {frame}:" in obj.read_text().splitlines()[0]
        ply = trimesh.load(out / "photos/a.png" / f"person_{k:02d}.ply", process=False)
        assert np.abs(np.asarray(ply.vertices) - ref).max() < 1e-5
        assert np.array_equal(np.asarray(ply.faces), free.faces)
        assert f"comment hmrcli mesh frame {frame}:".encode() in (out / "photos/a.png" / f"person_{k:02d}.ply").read_bytes()[:600]


def test_glb_round_trip_from_results(results, free, tmp_path):
    from test_export_glb import skin_glb

    root, persons = results
    out = tmp_path / "out"
    assert run_export(root, ExportOptions(out=out, formats=("glb",))).exit_code == 0
    rot, betas, t = persons[0]
    got, gl = skin_glb((out / "photos/a.png/person_00.glb").read_bytes(), weights_override=free.skinning_weights)
    assert np.abs(got - _posed(free, rot, betas, t) @ GLTF_FROM_OPENCV.T).max() < 2e-5
    assert gl.asset.extras["frame"] == "camera" and gl.asset.extras["body_model"]["name"] == "free"
    cam_node = next(n for n in gl.nodes if n.camera is not None)
    assert cam_node.extras["width"] == W and np.allclose(cam_node.extras["K"], K)


def test_json_record(results, free, tmp_path):
    root, persons = results
    out = tmp_path / "out"
    assert run_export(root, ExportOptions(out=out, formats=("json",), mesh_frame="model")).exit_code == 0
    rec = json.loads((out / "photos/a.png/person_01.json").read_text())
    assert rec["schema"] == PERSON_SCHEMA and rec["camera_schema"] == "hmrcli.camera/1"
    for key in ("image", "K", "R", "t", "person", "body_model", "mesh", "params", "joints", "units", "source", "hmrcli"):
        assert key in rec, key
    rot, betas, t = persons[1]
    assert rec["mesh"]["frame"] == "model" and np.allclose(rec["mesh"]["t"], t)
    p = rec["params"]
    assert len(p["global_orient"]) == 3 and len(p["body_pose"]) == 69 and len(p["betas"]) == 10
    assert np.allclose(p["rotmats"], rot) and np.allclose(p["transl"], t) and np.allclose(p["betas"], betas)
    assert rec["joints"]["names"] == list(JOINT_NAMES)
    out_b = free(torch.from_numpy(rot[None]), betas=torch.from_numpy(betas[None]))
    jc = out_b.joints[0].numpy() + t
    assert np.allclose(rec["joints"]["camera"], jc, atol=1e-9)
    uv = (jc @ K.T)[:, :2] / jc[:, 2:]
    assert np.allclose(rec["joints"]["image"], uv, atol=1e-6)
    assert rec["units"]["transl"] == "metres"


def test_npz_normalised(results, tmp_path):
    root, persons = results
    out = tmp_path / "out"
    assert run_export(root, ExportOptions(out=out, formats=("npz",))).exit_code == 0
    z = np.load(out / "photos/a.png/person_00.params.npz")
    for key in ("global_orient", "body_pose", "betas", "transl", "rotmats", "K", "body_model", "gender",
                "betas_space", "betas_applied", "cam_local"):
        assert key in z.files, key
    rot, betas, t = persons[0]
    assert np.allclose(z["rotmats"], rot) and np.allclose(z["betas"], betas) and str(z["gender"]) == "neutral"
    assert z["body_pose"].shape == (69,)


def test_npz_into_the_results_folder_never_overwrites_its_source(results):
    root, _ = results
    src = root / "photos/a.png/person_00.params.npz"
    before = src.read_bytes()
    s = run_export(root, ExportOptions(out=root, formats=("npz",), overwrite=True))
    assert s.exit_code == 0 and s.skipped == 2 and src.read_bytes() == before


def test_model_frame_mesh_next_to_camera_frame_json_is_refused(results):
    root, _ = results
    s = run_export(root, ExportOptions(out=root, formats=("obj",), mesh_frame="model"))
    assert s.exit_code == 2 and "another --out folder" in s.errors[0]["message"]
    assert run_export(root, ExportOptions(out=root, formats=("obj",))).exit_code == 0


def test_betas_not_applied_means_mean_shape(tmp_path, image, free):
    rot, betas, t = _pose(3, [0, 0, 5])
    root = tmp_path / "res"
    make_results(root, image[0], [(rot, betas, t)], betas_applied=False)
    run_export(root, ExportOptions(out=tmp_path / "o", formats=("obj",)))
    v = _obj_vertices(tmp_path / "o/photos/a.png/person_00.obj")
    assert np.abs(v - _posed(free, rot, np.zeros(10), t)).max() < 1e-5


def test_overlay_size_and_changed_pixels_inside_mesh_box(results, image, free, tmp_path):
    import cv2

    root, persons = results
    out = tmp_path / "out"
    s = run_export(root, ExportOptions(out=out, formats=("overlay",)))
    assert s.exit_code == 0 and s.done == 1
    ov = cv2.imread(str(out / "photos/a.png/overlay.png"))[..., ::-1]
    img = image[1]
    assert ov.shape == img.shape
    changed = np.any(ov != img, axis=-1)
    assert changed.sum() > 200
    inside = np.zeros_like(changed)
    for rot, betas, t in persons:
        v = _posed(free, rot, betas, t)
        uv = (v @ K.T)[:, :2] / v[:, 2:]
        x0, y0 = np.floor(uv.min(0)).astype(int) - 1
        x1, y1 = np.ceil(uv.max(0)).astype(int) + 1
        inside[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = True
        assert changed[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1].any()  # each person is drawn
    assert not changed[~inside].any()


def test_overlay_missing_image_is_an_error_persons_still_export(results, image, tmp_path):
    root, _ = results
    os.unlink(image[0])
    out = tmp_path / "out"
    s = run_export(root, ExportOptions(out=out, formats=("obj", "overlay")))
    assert (s.done, s.failed, s.exit_code) == (2, 1, 1)
    recs = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["stage"] == "export" and recs[0]["format"] == "overlay"
    assert recs[0]["file"] == str(image[0]) and "source image not found" in recs[0]["message"]
    assert (out / "photos/a.png/person_01.obj").is_file()


@pytest.mark.parametrize("damage", ["corrupt", "missing", "no_betas", "nan"])
def test_bad_params_file_fails_that_person_only(results, tmp_path, damage):
    root, persons = results
    bad = root / "photos/a.png/person_01.params.npz"
    if damage == "corrupt":
        bad.write_bytes(b"PK\x03\x04 not really a zip")
    elif damage == "missing":
        bad.unlink()
    elif damage == "no_betas":
        z = dict(np.load(bad))
        z.pop("betas")
        np.savez(bad, **z)
    else:
        z = dict(np.load(bad))
        z["rotmats"][3, 0, 0] = np.nan
        np.savez(bad, **z)
    out = tmp_path / "out"
    s = run_export(root, ExportOptions(out=out, formats=("obj", "json", "glb")))
    assert (s.done, s.failed, s.exit_code) == (1, 1, 1)
    recs = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["stage"] == "export"
    assert "person_01.params.npz" in recs[0]["file"] and recs[0]["message"].startswith(str(bad))
    expected = {"corrupt": "not a readable .npz", "missing": "missing parameters file",
                "no_betas": "missing key(s) 'betas'", "nan": "NaN"}[damage]
    assert expected in recs[0]["message"], recs[0]["message"]
    assert sorted(p.name for p in (out / "photos/a.png").iterdir()) == ["person_00.glb", "person_00.json", "person_00.obj"]


def test_params_without_rotmats_use_axis_angle(tmp_path, image, free):
    rot, betas, t = _pose(4, [0, 0, 5])
    root = tmp_path / "res"
    make_results(root, image[0], [(rot, betas, t)], drop=("rotmats", "K"))
    p = read_person(root / "photos/a.png", "person_00")
    assert np.allclose(p.rotmats, rot, atol=1e-9) and np.allclose(p.K, K)


def test_smpl_results_without_smpl_files_fail_clearly(tmp_path, image, monkeypatch):
    monkeypatch.delenv("HMRCLI_SMPL_DIR", raising=False)
    monkeypatch.setenv("HMRCLI_HOME", str(tmp_path / "home"))
    root = tmp_path / "res"
    make_results(root, image[0], [_pose(5, [0, 0, 5])], body_model="smpl")
    s = run_export(root, ExportOptions(out=tmp_path / "o", formats=("obj", "glb", "npz")))
    assert s.exit_code == 2 and len(s.errors) == 1 and s.errors[0]["format"] == "obj,glb"
    assert "body model 'smpl'" in s.errors[0]["message"] and "smpl.is.tue.mpg.de" in s.errors[0]["message"]
    assert (tmp_path / "o/photos/a.png/person_00.params.npz").is_file()  # needs no body model
    s = run_export(root, ExportOptions(out=tmp_path / "o2", formats=("npz",)))
    assert s.exit_code == 0 and s.done == 1


def test_smpl_results_with_smpl_dir(tmp_path, image, fake_smpl_dir):
    smpl = load_body_model("smpl", smpl_dir=fake_smpl_dir)
    rot, betas, t = _pose(6, [0, 0, 5])
    root = tmp_path / "res"
    make_results(root, image[0], [(rot, betas, t)], body_model="smpl")
    s = run_export(root, ExportOptions(out=tmp_path / "o", formats=("obj",), smpl_dir=fake_smpl_dir))
    assert s.exit_code == 0
    v = _obj_vertices(tmp_path / "o/photos/a.png/person_00.obj")
    assert np.abs(v - _posed(smpl, rot, betas, t)).max() < 1e-5


def test_skip_existing_and_overwrite(results, tmp_path):
    root, _ = results
    out = tmp_path / "out"
    opts = ExportOptions(out=out, formats=("obj", "npz"))
    assert run_export(root, opts).written == 4
    obj = out / "photos/a.png/person_00.obj"
    obj.write_text("sentinel")
    s = run_export(root, opts)
    assert (s.done, s.skipped, s.written) == (0, 2, 0) and obj.read_text() == "sentinel"
    (out / "photos/a.png/person_01.npz").unlink(missing_ok=True)
    (out / "photos/a.png/person_01.params.npz").unlink()
    s = run_export(root, opts)  # only the missing file is written
    assert (s.done, s.skipped, s.written) == (1, 1, 1) and obj.read_text() == "sentinel"
    s = run_export(root, ExportOptions(out=out, formats=("obj", "npz"), overwrite=True))
    assert (s.done, s.written) == (2, 4) and obj.read_text() != "sentinel"
    assert not [p for p in (out / "photos/a.png").iterdir() if p.name.endswith(".tmp")]


def test_no_results_raises(tmp_path):
    with pytest.raises(ResultsError, match="no results found"):
        run_export(tmp_path, ExportOptions(out=tmp_path, formats=("obj",)))


def test_bad_options():
    with pytest.raises(ValueError, match="unknown export format"):
        ExportOptions(out="x", formats=("fbx",))
    with pytest.raises(ValueError, match="camera or model"):
        ExportOptions(out="x", mesh_frame="world")


# -- the command line ---------------------------------------------------------------------

def test_cli_several_formats_json_lines(results, tmp_path):
    root, _ = results
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(root), "--out", str(out), "--format", "obj,ply,glb,json,npz", "--json"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.output.splitlines()]
    assert lines[0]["event"] == "done" and lines[0]["file"] == "photos/a.png" and lines[0]["written"] == 10
    summ = lines[-1]
    assert summ["schema"] == "hmrcli.summary/1" and summ["command"] == "export"
    assert (summ["persons"], summ["done"], summ["failed"], summ["exit_code"]) == (2, 2, 0, 0)
    names = sorted(p.name for p in (out / "photos/a.png").iterdir())
    assert names == sorted(f"person_0{k}{s}" for k in (0, 1) for s in (".obj", ".ply", ".glb", ".json", ".params.npz"))
    # again: everything is skipped
    r = runner.invoke(app, ["export", str(root), "--out", str(out), "-f", "obj,glb", "--json"])
    assert r.exit_code == 0 and json.loads(r.output.splitlines()[-1])["skipped"] == 2


def test_cli_some_failed_exit_1_then_all_failed_exit_2(results, tmp_path):
    root, _ = results
    (root / "photos/a.png/person_01.params.npz").write_bytes(b"garbage")
    out = tmp_path / "out"
    r = runner.invoke(app, ["export", str(root), "-o", str(out), "-f", "obj", "--json"])
    assert r.exit_code == 1, r.output
    err = [json.loads(line) for line in r.output.splitlines() if '"error"' in line]
    assert len(err) == 1 and err[0]["stage"] == "export" and "person_01.params.npz" in err[0]["file"]
    assert (out / "errors.jsonl").is_file()
    (root / "photos/a.png/person_00.params.npz").write_bytes(b"garbage")
    r = runner.invoke(app, ["export", str(root), "-o", str(tmp_path / "out2"), "-f", "obj", "--quiet", "--no-json"])
    assert r.exit_code == 2


def test_cli_usage_errors(tmp_path):
    r = runner.invoke(app, ["export", str(tmp_path), "-f", "fbx"])
    assert r.exit_code == 2 and "fbx" in r.output
    r = runner.invoke(app, ["export", str(tmp_path), "-f", "obj"])
    assert r.exit_code == 2 and "no results found" in r.output
    r = runner.invoke(app, ["export", str(tmp_path), "-f", "obj", "--mesh-frame", "world"])
    assert r.exit_code == 2


def test_cli_terminal_output(results, tmp_path):
    root, _ = results
    r = runner.invoke(app, ["export", str(root), "-o", str(tmp_path / "o"), "-f", "npz", "--no-json"])
    assert r.exit_code == 0 and "2 done" in r.output
    assert "export" in runner.invoke(app, ["--help"]).output


# -- end to end: what `hmrcli infer` writes today -------------------------------------------



@pytest.mark.slow
def test_export_after_infer(constant_checkpoint, tmp_path):
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "sample_images" / "astronaut.png"
    res = tmp_path / "res"
    r = runner.invoke(app, ["infer", str(sample), "--checkpoint", str(constant_checkpoint), "--out", str(res),
                            "--body-model", "free", "--detector", "whole-image", "--json"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "exp"
    fmts = "obj,glb,json,npz" + (",overlay" if _has_renderer() else "")
    r = runner.invoke(app, ["export", str(res), "--out", str(out), "--format", fmts, "--json"])
    assert r.exit_code == 0, r.output
    a, b = res / "astronaut.png" / "person_00.obj", out / "astronaut.png" / "person_00.obj"
    assert np.abs(_obj_vertices(a) - _obj_vertices(b)).max() < 1e-6
    rec = json.loads((out / "astronaut.png" / "person_00.json").read_text())
    cam = json.loads((res / "astronaut.png" / "person_00.camera.json").read_text())
    assert rec["rois"] == cam["rois"] and rec["t"] == cam["t"]
    assert (out / "astronaut.png" / "person_00.glb").read_bytes()[:4] == b"glTF"
    if _has_renderer():
        import cv2

        assert cv2.imread(str(out / "astronaut.png" / "overlay.png")).shape == (512, 512, 3)


def _has_renderer():
    try:
        import hmrcli.render  # noqa: F401
    except ImportError:
        return False
    return True
