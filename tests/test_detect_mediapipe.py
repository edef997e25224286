"""The mediapipe (BlazePose) backend on real photographs, against hand-labelled boxes."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hmrcli.cli import app
from hmrcli.detect.mediapipe_backend import (
    BlazePoseResult,
    blazepose_box,
    mediapipe_problem,
)
from hmrcli.sources import read_image

ROOT = Path(__file__).resolve().parents[1]
REF = json.loads((Path(__file__).parent / "data" / "reference_person_boxes.json").read_text())["images"]
needs_mediapipe = pytest.mark.skipif(mediapipe_problem() is not None, reason=f"{mediapipe_problem()}")
runner = CliRunner()


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def detector():
    if mediapipe_problem():
        pytest.skip(mediapipe_problem())
    from hmrcli.detect.mediapipe_backend import MediaPipeDetector

    with MediaPipeDetector() as det:
        yield det


@needs_mediapipe
@pytest.mark.parametrize("rel", sorted(REF))
def test_box_covers_the_visible_person(detector, rel):
    img = read_image(ROOT / rel)
    ref = REF[rel]
    assert img.shape[:2] == (ref["height"], ref["width"])
    (dets,) = detector.detect([img])
    assert len(dets) == 1
    d = dets[0]
    assert d.detector == "mediapipe:blazepose-full" and d.label == "person"
    assert 0.5 <= d.score <= 1.0
    box = d.box_xyxy
    assert 0 <= box[0] < box[2] <= ref["width"] - 1 and 0 <= box[1] < box[3] <= ref["height"] - 1
    assert iou(box, ref["box_xyxy"]) >= 0.5, (box, ref["box_xyxy"])


@needs_mediapipe
def test_pose_gives_landmarks_and_no_person_on_blank_images(detector):
    res = detector.pose(read_image(ROOT / "sample_images/astronaut.png"))
    assert res.landmarks.shape == (33, 2) and res.visibility.shape == (33,) and res.world_landmarks.shape == (33, 3)
    nose = res.landmarks[0]
    assert 150 < nose[0] < 300 and 60 < nose[1] < 180  # her face
    assert res.head_top[1] < nose[1]
    assert detector.detect([np.zeros((120, 100, 3), np.uint8), np.full((480, 640, 3), 200, np.uint8)]) == [[], []]
    with pytest.raises(ValueError, match="RGB uint8"):
        detector.detect([np.zeros((10, 10), np.uint8)])


@needs_mediapipe
def test_cli_mediapipe_detector_says_what_it_finds():
    paths = [str(ROOT / rel) for rel in sorted(REF)]
    r = runner.invoke(app, ["detect", "--detector", "mediapipe", *paths])
    assert r.exit_code == 0, r.output
    assert "mediapipe" in r.stderr and "every person whose head is in view" in r.stderr
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["path"] for x in recs] == paths
    for rec, rel in zip(recs, sorted(REF)):
        assert rec["schema"] == "hmrcli.detections/1" and rec["detector"] == "mediapipe"
        assert (rec["width"], rec["height"]) == (512, 512)
        assert len(rec["persons"]) == 1 and iou(rec["persons"][0]["box_xyxy"], REF[rel]["box_xyxy"]) >= 0.5


def test_help_says_what_the_offline_detector_finds():
    for cmd in ("detect", "crop", "infer"):
        r = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "300"})
        assert r.exit_code == 0
        text = " ".join(r.output.replace("│", " ").split())
        assert "every person whose head is in view" in text and "movenet (MoveNet MultiPose" in text, cmd


def _result(landmarks, head_top=(0, 0), face=(0, 0, 1, 1)):
    lm = np.asarray(landmarks, dtype=np.float64)
    return BlazePoseResult(lm, np.ones(len(lm)), np.zeros((len(lm), 3)), 0.9, np.asarray(head_top, float),
                           np.asarray(face, float))


def test_blazepose_box_pads_by_torso_and_clips():
    lm = np.tile([100.0, 100.0], (33, 1))
    lm[11], lm[12] = (90, 100), (110, 100)  # shoulders
    lm[23], lm[24] = (90, 200), (110, 200)  # hips: torso length 100
    lm[27], lm[28] = (95, 300), (105, 300)  # ankles
    res = _result(lm, head_top=(100, 40), face=(85, 50, 115, 80))
    np.testing.assert_allclose(blazepose_box(res, (640, 480), pad=0.1), [75, 30, 125, 310])
    # parts outside the image are clipped (a person cut by the bottom edge)
    np.testing.assert_allclose(blazepose_box(res, (640, 250), pad=0.1), [75, 30, 125, 249])
    # entirely outside: nobody
    assert blazepose_box(_result(lm + 1000, (1100, 1040), (1085, 1050, 1115, 1080)), (640, 480)) is None
