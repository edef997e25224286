"""The ``boxes`` backend (detections JSON lines and COCO annotations), the registry and the
``hmrcli detect`` command's records and errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hmrcli.cli import app
from hmrcli.detect import (
    DETECTORS,
    Detection,
    DetectorUnavailable,
    available_detectors,
    create_detector,
    detect_sources,
)
from hmrcli.detect.boxes_backend import BoxesDetector, BoxesError, load_box_records
from hmrcli.detect.mediapipe_backend import mediapipe_problem
from hmrcli.records import read_detection_records
from hmrcli.sources import expand_inputs, read_image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"
runner = CliRunner()


@pytest.fixture()
def photos(tmp_path):
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    shutil.copy(SAMPLES / "astronaut.png", d / "astronaut.png")
    shutil.copy(SAMPLES / "cameraman.png", d / "sub" / "cameraman.png")
    shutil.copy(SAMPLES / "grace_hopper.jpg", d / "grace hopper ü.jpg")
    return d


def _records(stdout):
    return [json.loads(x) for x in stdout.splitlines() if x.strip()]


@pytest.mark.parametrize("detector", ["whole-image", "mediapipe"])
def test_detect_then_boxes_round_trip(photos, tmp_path, detector):
    if detector == "mediapipe" and mediapipe_problem():
        pytest.skip(mediapipe_problem())
    out = tmp_path / "det.jsonl"
    r = runner.invoke(app, ["detect", str(photos), "--detector", detector, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # with --out the records go to the file only
    first = _records(out.read_text())
    assert len(first) == 3 and all(rec["schema"] == "hmrcli.detections/1" for rec in first)
    # the boxes backend gives back exactly the same boxes, scores, classes and detector names
    r = runner.invoke(app, ["detect", str(photos), "--boxes", str(out)])
    assert r.exit_code == 0, r.output
    again = _records(r.stdout)
    assert [rec["persons"] for rec in again] == [rec["persons"] for rec in first]
    assert [(x["path"], x["width"], x["height"]) for x in again] == [(x["path"], x["width"], x["height"]) for x in first]
    # ... through the Python API too, bit for bit
    det = BoxesDetector(out)
    for rec in first:
        img = read_image(rec["path"])
        got = det.detect([img], paths=[rec["path"]])[0]
        assert [d.to_json() for d in got] == rec["persons"]
    # and through stdin, without naming the images again
    r = runner.invoke(app, ["detect", "--boxes", "-"], input=out.read_text())
    assert r.exit_code == 0, r.output
    assert _records(r.stdout) == [{**x, "detector": "boxes"} for x in first]
    # the records reader reads them back unchanged
    assert {r["path"]: r["persons"] for r in read_detection_records(out)}[first[0]["path"]] == first[0]["persons"]


def test_whole_image_records(photos):
    r = runner.invoke(app, ["detect", str(photos / "grace hopper ü.jpg"), "-d", "whole-image"])
    assert r.exit_code == 0, r.output
    (rec,) = _records(r.stdout)
    assert rec["path"].endswith("grace hopper ü.jpg") and (rec["width"], rec["height"]) == (512, 600)
    assert rec["persons"] == [{"box_xyxy": [-0.5, -0.5, 511.5, 599.5], "score": None, "class": "person",
                               "detector": "whole-image"}]
    assert "whole-image" in r.stderr


def _coco(tmp_path, **extra):
    coco = {
        "images": [{"id": 1, "file_name": "astronaut.png", "width": 512, "height": 512},
                   {"id": 7, "file_name": "sub/cameraman.png", "width": 512, "height": 512},
                   {"id": 9, "file_name": "grace hopper ü.jpg", "width": 512, "height": 600}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [19, 14, 343, 497], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [280, 340, 230, 170], "iscrowd": 0},  # the helmet
            {"id": 12, "image_id": 7, "category_id": 1, "bbox": [0.5, 63.25, 330.5, 448], "iscrowd": 0},
            {"id": 13, "image_id": 7, "category_id": 1, "bbox": [300, 100, 200, 300], "iscrowd": 1},  # crowd
            {"id": 14, "image_id": 7, "category_id": 1, "bbox": [10, 10, 0, 5], "iscrowd": 0},  # empty
            {"id": 15, "image_id": 1, "category_id": 1, "bbox": [400, 10, 50, 100], "score": 0.99},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "helmet"}],
        **extra,
    }
    p = tmp_path / "instances.json"
    p.write_text(json.dumps(coco, indent=2))
    return p


def test_coco_person_filter_and_bbox_conversion(photos, tmp_path):
    coco = _coco(tmp_path)
    recs = load_box_records(coco)
    assert [r["path"] for r in recs] == ["astronaut.png", "sub/cameraman.png", "grace hopper ü.jpg"]
    a, c, g = recs
    # person only, xywh -> xyxy, scored boxes first, crowd and empty boxes dropped
    assert [p["box_xyxy"] for p in a["persons"]] == [[400, 10, 450, 110], [19, 14, 362, 511]]
    assert [p["score"] for p in a["persons"]] == [0.99, None]
    assert [p["annotation_id"] for p in a["persons"]] == [15, 10]
    assert [p["box_xyxy"] for p in c["persons"]] == [[0.5, 63.25, 331.0, 511.25]]
    assert g["persons"] == []
    # the CLI matches the photos by their trailing path (file_name is relative to the image folder)
    r = runner.invoke(app, ["detect", str(photos), "--boxes", str(coco), "--det-score", "0.5"])
    assert r.exit_code == 0, r.output
    got = {Path(x["path"]).name: x for x in _records(r.stdout)}
    assert [p["box_xyxy"] for p in got["astronaut.png"]["persons"]] == [[400, 10, 450, 110], [19, 14, 362, 511]]
    assert got["cameraman.png"]["persons"][0]["detector"] == "coco"
    assert got["grace hopper ü.jpg"]["persons"] == []


def test_coco_categories(tmp_path):
    p = _coco(tmp_path)
    assert len(load_box_records(p, category="helmet")[0]["persons"]) == 1
    assert len(load_box_records(p, category=3)[0]["persons"]) == 1
    with pytest.raises(ValueError, match="no category named 'dog'"):
        load_box_records(p, category="dog")
    # without a category list, COCO's person id 1
    p2 = _coco(tmp_path, categories=[])
    assert len(load_box_records(p2)[0]["persons"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                               "annotations": [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]}))
    with pytest.raises(ValueError, match=r"bad.json: annotations\[0\]: image_id 2"):
        load_box_records(bad)


def test_boxes_matching_errors(photos, tmp_path):
    img = read_image(photos / "astronaut.png")
    recs = [{"path": "x/astronaut.png", "width": 512, "height": 512, "persons": [{"box_xyxy": [1, 2, 3, 4]}]},
            {"path": "y/astronaut.png", "width": 512, "height": 512, "persons": []},
            {"path": str(photos / "sub" / "cameraman.png"), "width": 640, "height": 480, "persons": []}]
    det = BoxesDetector(records=recs)
    with pytest.raises(BoxesError, match="ambiguous"):
        det.detect([img], paths=[photos / "astronaut.png"])
    assert det.detect([img], paths=["/data/x/astronaut.png"])[0][0].box_xyxy.tolist() == [1, 2, 3, 4]
    with pytest.raises(BoxesError, match="640x480 image, but this image is 512x512"):
        det.detect([img], paths=[photos / "sub" / "cameraman.png"])
    with pytest.raises(BoxesError, match="no boxes for this image"):
        det.detect([img], paths=[photos / "nothere.png"])
    with pytest.raises(ValueError, match="needs the path"):
        det.detect([img])


def test_detect_errors_name_the_file_and_do_not_stop_the_batch(photos, tmp_path):
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    r = runner.invoke(app, ["detect", str(photos), "-d", "whole-image"])
    assert r.exit_code == 1
    assert len(_records(r.stdout)) == 3  # the good images
    assert "broken.jpg" in r.stderr and "error" in r.stderr
    r = runner.invoke(app, ["detect", str(photos / "broken.jpg"), str(tmp_path / "missing.png"), "-d", "whole-image"])
    assert r.exit_code == 2 and r.stdout == ""
    assert "broken.jpg" in r.stderr and "missing.png" in r.stderr
    # boxes missing for one image: that image fails, the others go on
    boxes = tmp_path / "one.jsonl"
    boxes.write_text(json.dumps({"path": str(photos / "astronaut.png"), "width": 512, "height": 512,
                                 "persons": []}) + "\n")
    r = runner.invoke(app, ["detect", str(photos / "astronaut.png"), str(photos / "sub"), "--boxes", str(boxes)])
    assert r.exit_code == 1 and len(_records(r.stdout)) == 1
    assert "cameraman.png: no boxes for this image" in r.stderr


def test_detect_usage_errors(photos, tmp_path):
    r = runner.invoke(app, ["detect", str(photos), "-d", "nope"])
    assert r.exit_code == 2 and "unknown detector" in r.output
    r = runner.invoke(app, ["detect", str(photos), "-d", "boxes"])
    assert r.exit_code == 2 and "--boxes" in r.output
    r = runner.invoke(app, ["detect", "-d", "whole-image"])
    assert r.exit_code == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.png", "persons": []}\nnot json\n')
    r = runner.invoke(app, ["detect", str(photos), "--boxes", str(bad)])
    assert r.exit_code == 2 and "bad.jsonl:2: not JSON" in r.stderr
    r = runner.invoke(app, ["detect", str(photos), "--boxes", str(tmp_path / "none.jsonl")])
    assert r.exit_code == 2 and "none.jsonl" in r.stderr


class _Flaky:
    """A detector that fails on images of one size, to check that a failure stays with its image."""

    name = "flaky"
    one_person_per_image = False

    def __init__(self, bad_hw):
        self.bad_hw = bad_hw
        self.calls = 0

    def detect(self, images):
        self.calls += 1
        out = []
        for im in images:
            if im.shape[:2] == self.bad_hw:
                raise RuntimeError("boom")
            out.append([Detection(np.array([1.0, 2.0, 30.0, 40.0]), 0.7, "flaky")])
        return out


def test_detect_sources_isolates_failures(photos):
    srcs = expand_inputs([str(photos)])
    res = list(detect_sources(srcs, _Flaky((600, 512)), batch_size=8, max_persons=1))
    assert [r.source for r in res] == srcs
    bad = [r for r in res if r.error]
    assert len(bad) == 1 and bad[0].error[0] == "detect" and "grace hopper" in bad[0].error[1] and "boom" in bad[0].error[1]
    assert all(len(r.detections) == 1 and r.image is not None for r in res if not r.error)


def test_registry(monkeypatch):
    names = [d["name"] for d in available_detectors()]
    assert names == list(DETECTORS) == ["mmdet", "movenet", "mediapipe", "boxes", "whole-image"]
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("yolo")
    # options a backend does not take are left out; None means "backend default"
    det = create_detector("whole-image", score_thr=0.3, checkpoint=None, device="cpu")
    assert det.name == "whole-image" and det.one_person_per_image
    # mmdet without its package/backend/checkpoint: DetectorUnavailable, nothing else
    try:
        create_detector("mmdet", checkpoint=None)
    except DetectorUnavailable:
        pass
    # auto: mmdet first, then movenet, then mediapipe; when none can run, one error saying what to do
    import hmrcli.detect as D

    tried = []

    def unavailable(name):
        tried.append(name)
        raise DetectorUnavailable(f"{name} missing")

    monkeypatch.setattr(D, "_backend_class", unavailable)
    monkeypatch.setattr(D, "_mmdet_problem", lambda: None)
    with pytest.raises(DetectorUnavailable,
                       match="mmdet: mmdet missing; movenet: movenet missing; mediapipe: mediapipe missing.*whole-image"):
        create_detector("auto")
    assert tried == ["mmdet", "movenet", "mediapipe"]


def test_auto_prefers_mmdet_when_it_can_run(monkeypatch):
    import hmrcli.detect as D
    from hmrcli.detect.whole_image import WholeImageDetector

    class FakeMMDet(WholeImageDetector):
        name = "mmdet"
        one_person_per_image = False

        def __init__(self, config=None, checkpoint=None, device="cpu", score_thr=0.5, batch_size=8):
            self.kw = dict(config=config, checkpoint=checkpoint, device=device, score_thr=score_thr, batch_size=batch_size)

    real = D._backend_class
    monkeypatch.setattr(D, "_backend_class", lambda n: FakeMMDet if n == "mmdet" else real(n))
    monkeypatch.setattr(D, "_mmdet_problem", lambda: None)
    det = create_detector("auto", score_thr=0.25, checkpoint="x.pth", device="cpu", source="ignored")
    assert det.name == "mmdet" and det.kw["score_thr"] == 0.25 and det.kw["checkpoint"] == "x.pth"
    # without weights for its default model, auto skips mmdet (without importing it) and says why
    monkeypatch.setattr(D, "_mmdet_problem", lambda: "no weights")
    from hmrcli.detect.movenet_backend import movenet_problem

    assert movenet_problem() is None  # onnxruntime is a core dependency, the model ships in models/detect
    det = create_detector("auto")
    assert det.name == "movenet" and det.auto_skipped == ["mmdet: no weights"]
    assert "auto: mmdet: no weights" in D.detection_summary(det)
    # without onnxruntime, auto goes on to mediapipe
    monkeypatch.setattr(D, "_backend_class", lambda n: FakeMMDet if n == "mmdet" else (
        (_ for _ in ()).throw(DetectorUnavailable("onnxruntime is not installed")) if n == "movenet" else real(n)))
    if mediapipe_problem():
        with pytest.raises(DetectorUnavailable, match="mmdet: no weights; movenet: onnxruntime is not installed; mediapipe: "):
            create_detector("auto")
    else:
        det = create_detector("auto")
        assert det.name == "mediapipe" and det.auto_skipped == ["mmdet: no weights", "movenet: onnxruntime is not installed"]


def test_cli_reports_unavailable_detector(monkeypatch, photos):
    import hmrcli.detect as D

    def unavailable(name):
        raise DetectorUnavailable(f"{name} is not installed (pip install {name})")

    monkeypatch.setattr(D, "_backend_class", unavailable)
    monkeypatch.setattr(D, "_mmdet_problem", lambda: None)
    r = runner.invoke(app, ["detect", str(photos)])
    assert r.exit_code == 2
    assert "no person detector is available" in r.stderr and "pip install mediapipe" in r.stderr
