"""The quality block in the outputs: camera JSON, result.json, --min-quality (infer and export),
the summary's flag counts, --overlay-quality; and the regression engine's block on a real
network whose RoIs agree by construction."""

import json

import cv2
import numpy as np
import pytest
from _pipeline_helpers import StubEngine
from typer.testing import CliRunner

from hmrcli.cli import app
from hmrcli.detect.boxes_backend import BoxesDetector
from hmrcli.engine.quality import FLAGS
from hmrcli.export.results import ExportOptions, run_export
from hmrcli.pipeline import InferOptions, run_inference, run_settings
from hmrcli.render import quality_color
from hmrcli.sources import expand_inputs

runner = CliRunner()


class QualityStub(StubEngine):
    """The stub engine with a quality block per person: score = the box's score, flags by rule."""

    def run(self, prepared, **kw):
        out = super().run(prepared, **kw)
        for ests in out:
            for e in ests:
                s = float(e.box.score)
                e.quality = {"score": s, "flags": ["rois_disagree"] + (["tiny"] if s < 0.3 else []), "engine": "stub"}
        return out


def _scene(tmp_path, scores):
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), np.full((60, 80, 3), 90, np.uint8))
    boxes = tmp_path / "boxes.jsonl"
    rec = {"schema": "hmrcli.detections/1", "path": str(src / "a.png"), "width": 80, "height": 60,
           "persons": [{"box_xyxy": [5 * k, 0, 5 * k + 20, 50], "score": s} for k, s in enumerate(scores)]}
    boxes.write_text(json.dumps(rec) + "\n")
    return src, BoxesDetector(str(boxes))


def _run(src, det, out, events=None, **kw):
    return run_inference(expand_inputs([str(src)]), QualityStub(), InferOptions(out=out, **kw),
                         progress=events.append if events is not None else None, detector=det)


def test_min_quality_withholds_persons_and_counts_flags(tmp_path):
    src, det = _scene(tmp_path, [0.9, 0.6, 0.2])
    out = tmp_path / "out"
    events = []
    s = _run(src, det, out, events, min_quality=0.5)
    d = out / "a.png"
    res = json.loads((d / "result.json").read_text())
    assert (s.done, s.persons, s.below_quality, s.persons_failed) == (1, 2, 1, 0)
    assert s.flags == {**{f: 0 for f in FLAGS}, "rois_disagree": 3, "tiny": 1}
    js = s.to_json()
    assert js["below_quality"] == 1 and js["flags"]["rois_disagree"] == 3
    assert res["person_indices"] == [0, 1]
    assert [(q["index"], q["score"], q["written"]) for q in res["quality"]] == [(0, 0.9, True), (1, 0.6, True),
                                                                               (2, 0.2, False)]
    (problem,) = res["problems"]
    assert "person 2" in problem and "0.2" in problem and "--min-quality 0.5" in problem and "tiny" in problem
    assert not any(p.name.startswith("person_02") for p in d.iterdir())
    cam = json.loads((d / "person_01.camera.json").read_text())
    assert cam["quality"]["score"] == 0.6 and cam["quality"]["flags"] == ["rois_disagree"]
    (err,) = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert err["stage"] == "quality" and "person 2" in err["message"]
    assert [e["stage"] for e in events if e["event"] == "warning"] == ["quality"]


def test_without_min_quality_everybody_is_written_and_settings_unchanged(tmp_path):
    src, det = _scene(tmp_path, [0.9, 0.2])
    out = tmp_path / "out"
    s = _run(src, det, out)
    res = json.loads((out / "a.png" / "result.json").read_text())
    assert s.persons == 2 and s.below_quality == 0 and res["problems"] == []
    assert all(q["written"] for q in res["quality"])
    settings, _ = run_settings(QualityStub(), InferOptions(out=out), det)
    assert "min_quality" not in settings and "overlay_quality" not in settings  # old results are not redone
    settings, _ = run_settings(QualityStub(), InferOptions(out=out, min_quality=0.4, overlay=True, overlay_quality=True), det)
    assert settings["min_quality"] == 0.4 and settings["overlay_quality"] is True
    s = _run(src, det, out, min_quality=0.5)  # another threshold: redone
    assert s.redone == 1 and s.below_quality == 1


def test_overlay_quality_colours(tmp_path, monkeypatch):
    import hmrcli.pipeline.layout as layout

    seen = {}

    def fake_overlay(image, meshes, K, colors=None):
        seen["colors"] = colors
        return image

    monkeypatch.setattr(layout, "render_overlay", fake_overlay)
    src, det = _scene(tmp_path, [0.9, 0.1])
    _run(src, det, tmp_path / "out", overlay=True, overlay_quality=True)
    assert seen["colors"] == [quality_color(0.9), quality_color(0.1)]
    _run(src, det, tmp_path / "out2", overlay=True)
    assert seen["colors"] is None


def test_quality_color_ramp():
    assert quality_color(0.0) == pytest.approx((0.95, 0.15, 0.15))
    assert quality_color(1.0) == pytest.approx((0.1, 0.85, 0.15))
    assert quality_color(0.5)[0] > 0.9 and quality_color(0.5)[1] > 0.9  # yellow
    assert quality_color(None) == quality_color(float("nan")) == (0.6, 0.6, 0.6)
    assert all(0.0 <= c <= 1.0 for s in np.linspace(-1, 2, 31) for c in quality_color(s))


# -- export --min-quality -------------------------------------------------------------------

@pytest.fixture()
def results(tmp_path):
    from test_export_results import _pose, make_results

    yy, xx = np.mgrid[0:240, 0:320]
    img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), img[..., ::-1])
    root = tmp_path / "res"
    d = make_results(root, path, [_pose(0, [-0.45, 0.05, 5.0]), _pose(1, [0.5, 0.0, 6.0]), _pose(2, [0.0, 0.0, 7.0])])
    for k, score in ((0, 0.8), (1, 0.3)):  # person 2: no quality block (an older hmrcli)
        p = d / f"person_{k:02d}.camera.json"
        cam = json.loads(p.read_text())
        cam["quality"] = {"score": score, "flags": []}
        p.write_text(json.dumps(cam))
    return root, d


def test_export_min_quality(results, tmp_path):
    root, d = results
    out = tmp_path / "x"
    s = run_export(root, ExportOptions(out=out, formats=("obj", "json"), min_quality=0.5))
    files = sorted(p.name for p in (out / "photos/a.png").iterdir())
    assert files == ["person_00.json", "person_00.obj"]
    assert (s.persons, s.done, s.skipped, s.failed, s.below_quality, s.quality_unknown) == (3, 1, 2, 0, 1, 1)
    rec = json.loads((out / "photos/a.png/person_00.json").read_text())
    assert rec["schema"] == "hmrcli.person/1" and rec["quality"]["score"] == 0.8
    assert s.to_json()["below_quality"] == 1 and s.exit_code == 0
    s = run_export(root, ExportOptions(out=tmp_path / "y", formats=("obj",)))
    assert s.done == 3 and s.below_quality == 0


def test_export_overlay_min_quality_and_colours(results, tmp_path, monkeypatch):
    import hmrcli.export.results as R

    root, d = results
    seen = []
    monkeypatch.setattr(R, "render_overlay", lambda image, meshes, K, colors=None: seen.append((len(meshes), colors)) or image)
    s = run_export(root, ExportOptions(out=tmp_path / "o1", formats=("overlay",), min_quality=0.5, overlay_quality=True))
    assert s.failed == 0 and seen[-1] == (1, [quality_color(0.8)])
    run_export(root, ExportOptions(out=tmp_path / "o2", formats=("overlay",), overlay_quality=True))
    assert seen[-1] == (3, [quality_color(0.8), quality_color(0.3), quality_color(None)])
    n = len(seen)
    s = run_export(root, ExportOptions(out=tmp_path / "o3", formats=("overlay",), min_quality=0.95))
    assert s.failed == 0 and len(seen) == n and (tmp_path / "o3/photos/a.png/overlay.png").is_file()  # nobody drawn


def test_export_cli_min_quality(results, tmp_path):
    root, _ = results
    r = runner.invoke(app, ["export", str(root), "--format", "obj", "--out", str(tmp_path / "c"), "--min-quality",
                            "0.5", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["below_quality"] == 1 and summary["quality_unknown"] == 1 and summary["done"] == 1
    r = runner.invoke(app, ["export", str(root), "--min-quality", "1.5"])
    assert r.exit_code == 2


def test_infer_cli_overlay_quality_needs_overlay(tmp_path):
    r = runner.invoke(app, ["infer", str(tmp_path), "--out", str(tmp_path / "o"), "--overlay-quality", "--engine", "fit"])
    assert r.exit_code == 2 and "--overlay" in r.output


# -- the regression engine on a real network ------------------------------------------------------

def test_regression_engine_quality_block(constant_checkpoint):
    """Every RoI of the constant network outputs the same pose: the joints agree exactly
    (spread 0); each RoI's local camera is the same (0.9, 0, 0) in its own crop, which in the
    full image places the person differently per RoI: a camera spread > 0."""
    from hmrcli.api import load_regressor
    from hmrcli.body import load_body_model
    from hmrcli.engine.regress import PersonBox, RegressionEngine

    eng = RegressionEngine(load_regressor(str(constant_checkpoint)), load_body_model("free"), batch_size=2)
    img = np.full((240, 320, 3), 120, np.uint8)
    persons = [PersonBox(np.array([100.0, 20, 180, 220]), 0.9, "test"), PersonBox(np.array([0.0, 30, 60, 200]), 0.5, "t")]
    (ests,) = eng.run([(eng.prepare(img, persons), persons)])
    for e in ests:
        q = e.quality
        assert q["engine"] == "regress" and q["rois"] == 5 and len(q["joint_spread_mm"]["per_joint"]) == 24
        assert q["joint_spread_mm"]["overall"] == 0.0
        assert q["camera_spread_pct"] > 0 and 0.0 <= q["score"] <= 1.0
        assert set(q["flags"]) <= set(FLAGS)
    assert "left" in ests[1].quality["truncated"] and "left" not in ests[0].quality["truncated"]
