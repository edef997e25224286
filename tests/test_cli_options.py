"""Options of ``hmrcli infer`` / ``detect`` / ``weights list`` that no other test exercised,
checked by what they change in the outputs: --max-persons, --aggregation, --gender,
--workers, detect --det-config / --det-checkpoint, and the content of `weights list`."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import _probe as P
import cv2
import numpy as np
import pytest
import torch
from _fake_smpl import make_fake_smpl, reference_lbs
from _pipeline_helpers import output_state
from typer.testing import CliRunner

from hmrcli.cli import app
from hmrcli.detect.base import DetectorUnavailable

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"
runner = CliRunner()

#: the constant network's pose: upright, left hip 0.4 rad about x, right shoulder 0.6 rad about z
POSE = np.tile(np.eye(3), (24, 1, 1))
POSE[0] = P.FLIP
POSE[1] = cv2.Rodrigues(np.array([0.4, 0.0, 0.0]))[0]
POSE[17] = cv2.Rodrigues(np.array([0.0, 0.0, 0.6]))[0]
BETAS = np.array([1.0, -0.6, 0.4, 0.0, 0.0, 0.3, 0.0, 0.0, -0.2, 0.0])


@pytest.fixture(scope="module")
def constant(tmp_path_factory):
    path, _ = P.small_checkpoint(tmp_path_factory.mktemp("const") / "const", heads="constant", pose=POSE, betas=BETAS)
    return path


@pytest.fixture(scope="module")
def sensitive(tmp_path_factory):
    return P.small_checkpoint(tmp_path_factory.mktemp("sens") / "sens")


def _image(tmp_path, image=None, name="img.png"):
    d = tmp_path / "photos"
    d.mkdir(exist_ok=True)
    image = P.quadrant_image() if image is None else image
    cv2.imwrite(str(d / name), image[..., ::-1])
    return d / name, image


def _boxes(tmp_path, path, image, persons):
    f = tmp_path / "boxes.jsonl"
    f.write_text(json.dumps({"schema": "hmrcli.detections/1", "path": str(path), "width": image.shape[1],
                             "height": image.shape[0], "persons": persons}) + "\n")
    return f


def _infer(*args):
    return runner.invoke(app, ["infer", *[str(a) for a in args], "--device", "cpu", "--json", "-q"])


def _cam(out, name, k):
    return json.loads((out / name / f"person_{k:02d}.camera.json").read_text())


def _obj_vertices(path):
    return np.array([[float(x) for x in line.split()[1:4]] for line in path.read_text().splitlines()
                     if line.startswith("v ")])


# --------------------------------------------------------------------------- --max-persons


def test_max_persons_keeps_the_highest_scores(constant, tmp_path):
    path, image = _image(tmp_path)
    persons = [{"box_xyxy": [10, 10, 100, 200], "score": 0.5}, {"box_xyxy": [120, 20, 220, 230], "score": 0.9},
               {"box_xyxy": [200, 40, 310, 235], "score": 0.7}]
    boxes = _boxes(tmp_path, path, image, persons)
    outs = {}
    for n in (None, 2, 1):
        out = tmp_path / f"out{n}"
        r = _infer(path, "--boxes", boxes, "--checkpoint", constant, "--body-model", "free", "--out", out,
                   *(["--max-persons", n] if n else []))
        assert r.exit_code == 0, r.output
        res = json.loads((out / "img.png" / "result.json").read_text())
        outs[n] = [_cam(out, "img.png", k)["person"] for k in res["person_indices"]]
        run = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
        assert run["settings"]["max_persons"] == n
    # by decreasing score; --max-persons N keeps the first N of them
    assert [p["score"] for p in outs[None]] == [0.9, 0.7, 0.5]
    assert outs[2] == outs[None][:2] and outs[1] == outs[None][:1]
    assert outs[1][0]["box_xyxy"] == [120, 20, 220, 230]
    r = _infer(path, "--boxes", boxes, "--checkpoint", constant, "--out", tmp_path / "o0", "--max-persons", 0)
    assert r.exit_code == 2 and "--max-persons" in r.output


# --------------------------------------------------------------------------- --aggregation


def test_aggregation_paper_decodes_the_mean_feature(sensitive, tmp_path):
    ckpt, model = sensitive
    path, image = _image(tmp_path)
    xyxy = [60.0, 30.0, 200.0, 220.0]
    boxes = _boxes(tmp_path, path, image, [{"box_xyxy": xyxy, "score": 0.9}])
    x, bi = P.network_input(P.expected_inputs(image, xyxy, P.small_config()))
    got = {}
    for agg in ("code", "paper"):
        out = tmp_path / agg
        r = _infer(path, "--boxes", boxes, "--checkpoint", ckpt, "--body-model", "free", "--out", out,
                   "--aggregation", agg)
        assert r.exit_code == 0, r.output
        cam = _cam(out, "img.png", 0)
        assert cam["aggregation"] == agg
        run = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
        assert run["settings"]["model"]["aggregation"] == agg
        model.aggregation = agg  # the same network, the person decoded the other way
        try:
            with torch.no_grad():
                want = model(x, bi)
        finally:
            model.aggregation = "code"
        par = np.load(out / "img.png" / "person_00.params.npz")
        np.testing.assert_allclose(par["rotmats"], want.person_rotmats[0].double().numpy(), atol=1e-4)
        np.testing.assert_allclose(par["betas"], want.person_betas[0].double().numpy(), rtol=1e-4, atol=1e-5)
        got[agg] = (par["rotmats"], cam["t"])
    # the person's pose differs (measured 0.012, far above the 1e-4 agreement asserted above);
    # the camera is RoI 0's either way
    assert np.abs(got["code"][0] - got["paper"][0]).max() > 5e-3
    np.testing.assert_allclose(got["code"][1], got["paper"][1], rtol=1e-5)
    # without the option: the checkpoint's own (code)
    out = tmp_path / "default"
    assert _infer(path, "--boxes", boxes, "--checkpoint", ckpt, "--body-model", "free", "--out", out).exit_code == 0
    assert _cam(out, "img.png", 0)["aggregation"] == "code"
    np.testing.assert_allclose(np.load(out / "img.png" / "person_00.params.npz")["rotmats"], got["code"][0])
    r = _infer(path, "--boxes", boxes, "--checkpoint", ckpt, "--out", tmp_path / "bad", "--aggregation", "median")
    assert r.exit_code == 2 and "aggregation" in r.output and "median" in r.output


# --------------------------------------------------------------------------- --gender


def test_gender_picks_that_smpl_model(constant, fake_smpl_dir, tmp_path):
    """The fake SMPL folder has a neutral (seed 0) and a male (seed 1) model: the meshes are
    those models' own skinning of the network's pose and betas."""
    path, image = _image(tmp_path)
    boxes = _boxes(tmp_path, path, image, [{"box_xyxy": [60, 30, 200, 220], "score": 0.9}])
    for gender, seed in ((None, 0), ("neutral", 0), ("male", 1)):
        out = tmp_path / str(gender)
        r = _infer(path, "--boxes", boxes, "--checkpoint", constant, "--body-model", "smpl", "--smpl-dir",
                   fake_smpl_dir, "--mesh-frame", "model", "--out", out, *(["--gender", gender] if gender else []))
        assert r.exit_code == 0, r.output
        cam = _cam(out, "img.png", 0)
        assert cam["body_model"] == {"name": "smpl", "gender": gender or "neutral", "betas_applied": True,
                                     "betas_space": "smpl"}
        want, _ = reference_lbs(make_fake_smpl(seed=seed), POSE, BETAS)
        np.testing.assert_allclose(_obj_vertices(out / "img.png" / "person_00.obj"), want, atol=2e-5)
    r = _infer(path, "--boxes", boxes, "--checkpoint", constant, "--body-model", "smpl", "--smpl-dir", fake_smpl_dir,
               "--gender", "female", "--out", tmp_path / "female")
    assert r.exit_code == 2 and "SMPL female model not found" in r.output
    r = _infer(path, "--boxes", boxes, "--checkpoint", constant, "--body-model", "smpl", "--smpl-dir", fake_smpl_dir,
               "--gender", "alien", "--out", tmp_path / "alien")
    assert r.exit_code == 2 and "gender must be neutral, male or female" in r.output


# --------------------------------------------------------------------------- --workers


def test_workers_change_where_images_are_decoded_not_the_outputs(constant, tmp_path, monkeypatch):
    from hmrcli.engine.regress import RegressionEngine

    photos = tmp_path / "in"
    photos.mkdir()
    for i in range(6):
        shutil.copy(SAMPLES / ("astronaut.png" if i % 2 else "cameraman.png"), photos / f"img_{i}.png")
    (photos / "img_3.png").write_bytes(b"not a png")  # a failure in the middle
    seen: list[list[str]] = []
    real = RegressionEngine.prepare

    def prepare(self, *a, **k):  # runs on the loader thread: which decode threads exist now
        seen.append(sorted(t.name for t in threading.enumerate() if t.name.startswith("hmrcli-decode")))
        return real(self, *a, **k)

    monkeypatch.setattr(RegressionEngine, "prepare", prepare)
    states, decoders = {}, {}
    for workers in (0, 1, 3):
        seen.clear()
        out = tmp_path / f"w{workers}"
        r = _infer(photos, "--checkpoint", constant, "--detector", "whole-image", "--body-model", "free",
                   "--out", out, "--workers", workers)
        assert r.exit_code == 1, r.output  # one image failed
        s = json.loads(r.stdout.strip().splitlines()[-1])
        assert (s["done"], s["failed"]) == (5, 1)
        assert len(seen) == 5
        decoders[workers] = {n for names in seen for n in names}
        states[workers] = output_state(out)
    assert decoders[0] == set()  # decoded in the loader thread
    assert len(decoders[1]) == 1 and 1 <= len(decoders[3]) <= 3
    assert states[0] == states[1] == states[3]  # byte-identical outputs, errors.jsonl included
    assert "img_3.png" in states[0]["errors.jsonl"].decode()
    r = _infer(photos, "--checkpoint", constant, "--out", tmp_path / "neg", "--workers", -1)
    assert r.exit_code == 2 and "--workers" in r.output


# --------------------------------------------------------------------------- detect --det-config/--det-checkpoint


def test_detect_det_config_and_checkpoint_reach_mmdet(tmp_path, monkeypatch):
    """The options make ``auto`` the mmdet backend (no silent fallback) and are handed to it
    as given; its boxes are what `detect` writes. The backend is a stand-in recording them."""
    import hmrcli.detect as D
    from hmrcli.detect.base import Detection
    from hmrcli.detect.whole_image import WholeImageDetector

    made = []

    class FakeMMDet(WholeImageDetector):
        name = "mmdet"
        one_person_per_image = False

        def __init__(self, config=None, checkpoint=None, device="cpu", score_thr=0.5, batch_size=8):
            made.append(dict(config=config, checkpoint=checkpoint, device=device, score_thr=score_thr))
            self.label = "mmdet:fake"

        def detect(self, images):
            return [[Detection(np.array([1.0, 2.0, 30.0, 40.0]), 0.8, "mmdet:fake"),
                     Detection(np.array([5.0, 6.0, 20.0, 25.0]), 0.6, "mmdet:fake")] for _ in images]

    real = D._backend_class
    monkeypatch.setattr(D, "_backend_class", lambda n: FakeMMDet if n == "mmdet" else real(n))
    img = SAMPLES / "astronaut.png"
    r = runner.invoke(app, ["detect", str(img), "--det-config", "my/config.py", "--det-checkpoint", "w.pth",
                            "--det-score", "0.3", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert made == [{"config": "my/config.py", "checkpoint": "w.pth", "device": "cpu", "score_thr": 0.3}]
    (rec,) = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [p["box_xyxy"] for p in rec["persons"]] == [[1.0, 2.0, 30.0, 40.0], [5.0, 6.0, 20.0, 25.0]]
    assert [p["score"] for p in rec["persons"]] == [0.8, 0.6]
    # given to another detector they are ignored, and it says so
    made.clear()
    r = runner.invoke(app, ["detect", str(img), "--detector", "whole-image", "--det-config", "my/config.py"])
    assert r.exit_code == 0 and made == []
    assert "--det-config/--det-checkpoint are for mmdet; the whole-image detector ignores them" in r.stderr
    # an mmdet that cannot run with them: exit 2 naming it, no fallback to another detector
    monkeypatch.setattr(D, "_backend_class", lambda n: (_ for _ in ()).throw(DetectorUnavailable("no mmdet here"))
                        if n == "mmdet" else real(n))
    r = runner.invoke(app, ["detect", str(img), "--det-checkpoint", "w.pth"])
    assert r.exit_code == 2 and "detector mmdet is not available" in r.stderr and "no mmdet here" in r.stderr


@pytest.mark.mmdet
@pytest.mark.filterwarnings("ignore:`torch.cuda.amp.autocast:FutureWarning")  # (mmdet's own code)
def test_detect_with_a_saved_mmdet_checkpoint(tmp_path):
    """Real MMDetection (RTMDet-tiny config shipped in mmdet) with seeded random weights
    saved as a checkpoint file: `detect --det-config --det-checkpoint` gives the boxes the
    backend gives with that config and file."""
    from hmrcli.detect import mmdet_backend as mb

    try:
        mb._import_mmdet()
    except DetectorUnavailable as e:  # the optional [mmdet] extra
        pytest.skip(f"MMDetection is not importable here: {str(e)[:120]}")
    config = "rtmdet/rtmdet_tiny_8xb32-300e_coco.py"
    det = mb.MMDetDetector(config=config, allow_random_weights=True, seed=0, score_thr=0.0)
    head = det.model.bbox_head
    with torch.no_grad():  # scores spread over (0, 1) for "person" only, boxes tens of pixels wide
        for conv in head.rtm_cls:
            conv.weight.mul_(3000.0)
            conv.bias.fill_(-30.0)
            conv.bias[0] = -6.0
        for conv in head.rtm_reg:
            conv.weight.mul_(1000.0)
            conv.bias.fill_(3.0)
    ckpt = tmp_path / "tiny_random.pth"
    torch.save({"meta": {"dataset_meta": {"classes": tuple(det.model.dataset_meta["classes"])}},
                "state_dict": {k: v.clone() for k, v in det.model.state_dict().items()}}, ckpt)
    img = SAMPLES / "astronaut.png"
    r = runner.invoke(app, ["detect", str(img), "--det-config", config, "--det-checkpoint", str(ckpt),
                            "--det-score", "0.2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    (rec,) = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    from hmrcli.sources import read_image

    want = mb.MMDetDetector(config=config, checkpoint=str(ckpt), score_thr=0.2).detect([read_image(img)])[0]
    assert len(want) >= 1 and len(rec["persons"]) == len(want)
    np.testing.assert_allclose([p["box_xyxy"] for p in rec["persons"]], [d.box_xyxy for d in want], atol=1e-3)
    np.testing.assert_allclose([p["score"] for p in rec["persons"]], [d.score for d in want], atol=1e-5)
    assert all(p["score"] >= 0.2 for p in rec["persons"])


# --------------------------------------------------------------------------- weights list


def test_weights_list_shows_the_registry_and_what_is_present(tmp_path, monkeypatch):
    from hmrcli.assets import asset_path

    reg = json.loads(asset_path("registry.json").read_text())
    entries = {**reg["checkpoints"], **reg.get("detectors", {})}
    folder = tmp_path / "ckpts"
    folder.mkdir()
    monkeypatch.setenv("HMRCLI_CHECKPOINT_DIR", str(folder))
    (folder / entries["cliff-res50"]["filename"]).write_bytes(b"x")  # present (content is not checked here)
    r = runner.invoke(app, ["weights", "list", "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [row["name"] for row in rows] == sorted(entries)
    for row in rows:
        e = entries[row["name"]]
        assert row == {"name": row["name"], "filename": e["filename"], "present": row["name"] == "cliff-res50",
                       "path": str(folder / e["filename"]), "arch": e["arch"], "backbone": e["backbone"],
                       "published": e.get("published"), "source": e["source"]}
    # the table: one row per entry, present or not, the regressors' published 3DPW figures and the
    # detectors' box AP
    r = runner.invoke(app, ["weights", "list", "--no-json"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert f"(folder:{folder})" in "".join(r.stdout.split())  # (the title wraps at 80 columns)
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]]
             for line in r.stdout.splitlines() if line.count("│") >= 5}
    assert set(lines) == set(entries)
    for name, (filename, present, figures) in lines.items():
        shown = filename.rstrip("…")  # long names are cut with …
        assert len(shown) >= 10 and entries[name]["filename"].startswith(shown)
        assert present == ("yes" if name == "cliff-res50" else "no")
    for name, e in reg["checkpoints"].items():
        p = e["published"]
        assert lines[name][2] == f"3DPW MPJPE {p['MPJPE']} / PA {p['PA-MPJPE']} / PVE {p['PVE']} mm", name
    for name, e in reg["detectors"].items():
        p = e["published"]
        assert lines[name][2] == f"{p['dataset'].upper()} {p['split']} box AP {p['box AP']}", name
    assert "hmrcli weights list --json" in r.stdout


# --------------------------------------------------------------------------- --batch-size


def test_batch_size_auto_and_numbers(constant, tmp_path, monkeypatch):
    """--batch-size N or auto reaches the engine (auto: 16 on the CPU); the step of images
    follows it within 8..32 for the regression engine; bad values exit 2 naming the option."""
    from hmrcli.engine import regress
    from hmrcli.pipeline import run as run_mod

    path, image = _image(tmp_path)
    boxes = _boxes(tmp_path, path, image, [{"box_xyxy": [10, 10, 100, 200], "score": 0.9}])
    seen = []
    real = run_mod.execute

    def spy(todo, engine, opts, *a, **kw):
        seen.append((engine.batch_size, opts.images_per_step))
        return real(todo, engine, opts, *a, **kw)

    monkeypatch.setattr(run_mod, "execute", spy)
    for arg, want in ((None, (regress.DEFAULT_CPU_BATCH_SIZE, 16)), ("auto", (16, 16)), ("3", (3, 8)),
                      ("64", (64, 32))):
        out = tmp_path / f"out{arg}"
        r = _infer(path, "--boxes", boxes, "--checkpoint", constant, "--body-model", "free", "--out", out,
                   *(["--batch-size", arg] if arg else []))
        assert r.exit_code == 0, r.output
        assert seen[-1] == want, (arg, seen)
    for bad in ("0", "-2", "many", "1.5"):
        r = _infer(path, "--boxes", boxes, "--checkpoint", constant, "--out", tmp_path / "bad", "--batch-size", bad)
        assert r.exit_code == 2 and "--batch-size" in r.output, (bad, r.output)
