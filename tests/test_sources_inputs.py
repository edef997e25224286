"""Expanding inputs: stdin paths and records, output names, sharding, video frames, and the
commands' piping (`hmrcli detect | hmrcli infer -`, `hmrcli crop --json | hmrcli infer -`)."""

import io
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from hmrcli.cli import app
from hmrcli.records import parse_input_text
from hmrcli.sources import (
    ImageReadError,
    expand_inputs,
    parse_shard,
    read_image,
    shard_sources,
    sources_from_records,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"
runner = CliRunner()


def _png(path: Path, value: int = 100, hw=(24, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((*hw, 3), value, np.uint8)
    img[0, 0] = (255, 0, 0)
    assert cv2.imwrite(str(path), img)
    return path


@pytest.fixture()
def photos(tmp_path):
    d = tmp_path / "photos"
    (d / "sub dir").mkdir(parents=True)
    shutil.copy(SAMPLES / "astronaut.png", d / "astronaut.png")
    shutil.copy(SAMPLES / "grace_hopper.jpg", d / "grace hopper ü.jpg")
    shutil.copy(SAMPLES / "cameraman.png", d / "sub dir" / "日本.png")
    return d


def _safe(name: str, out: Path) -> bool:
    p = Path(name)
    return (not p.is_absolute() and ".." not in p.parts
            and (out / name).resolve().is_relative_to(out.resolve()))


# --------------------------------------------------------------------------- names


def test_folder_names_spaces_non_ascii(photos):
    srcs = expand_inputs([str(photos)])
    assert [s.name for s in srcs] == ["astronaut.png", "grace hopper ü.jpg", "sub dir/日本.png"]
    for s in srcs:
        assert read_image(s).shape[2] == 3


def test_names_cannot_escape_the_output_folder(photos, tmp_path, monkeypatch):
    out = tmp_path / "out"
    inputs = [str(photos / ".." / "photos" / "astronaut.png"), str(photos / "sub dir" / ".." / "*.jpg")]
    srcs = expand_inputs(inputs)
    assert [s.name for s in srcs] == ["astronaut.png", "grace hopper ü.jpg"]
    # stdin paths with ..
    monkeypatch.chdir(photos / "sub dir")
    srcs = expand_inputs(["-"], stdin=io.StringIO("../astronaut.png\n../../photos/grace hopper ü.jpg\n"))
    assert [s.name for s in srcs] == ["astronaut.png", "grace hopper ü.jpg"]
    assert all(read_image(s).ndim == 3 for s in srcs)
    # records that name escaping paths or output names
    recs = [{"schema": "hmrcli.detections/1", "path": "../../a.png", "width": 1, "height": 1, "persons": []},
            {"schema": "hmrcli.detections/1", "path": "b.png", "name": "../../../etc/passwd", "width": 1,
             "height": 1, "persons": []},
            {"schema": "hmrcli.detections/1", "path": "/abs/c.png", "name": "..", "width": 1, "height": 1,
             "persons": []}]
    srcs = sources_from_records(recs)
    assert [s.name for s in srcs] == ["a.png", "etc/passwd", "input_000002"]
    for s in srcs:
        assert _safe(s.name, out)


def test_name_clashes_get_unique_names(tmp_path):
    a = _png(tmp_path / "a" / "x.png")
    b = _png(tmp_path / "b" / "x.png")
    c = _png(tmp_path / "c" / "b" / "x.png")
    srcs = expand_inputs([str(a), str(b), str(c), str(a)])  # a twice: once
    assert [s.name for s in srcs] == ["x.png", "b/x.png", "c/b/x.png"]


# --------------------------------------------------------------------------- stdin


def test_stdin_paths_lines_and_nul(photos):
    text = f"{photos / 'astronaut.png'}\n\n{photos / 'sub dir'}\n"
    srcs = expand_inputs(["-"], stdin=io.StringIO(text))
    assert [s.name for s in srcs] == ["astronaut.png", "日本.png"]
    assert all(s.record is None for s in srcs)
    text = f"{photos / 'grace hopper ü.jpg'}\0{photos / 'astronaut.png'}\0"
    assert [s.name for s in expand_inputs(["-"], stdin=io.StringIO(text))] == ["grace hopper ü.jpg", "astronaut.png"]


def test_detect_records_round_trip_through_stdin(photos):
    """detect records -> sources that carry the image path, the output name and the boxes."""
    r = runner.invoke(app, ["detect", str(photos), "-d", "whole-image"])
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    direct = expand_inputs([str(photos)])
    assert [x["name"] for x in recs] == [s.name for s in direct]
    piped = expand_inputs(["-"], stdin=io.StringIO(r.stdout))
    assert [(s.path, s.name) for s in piped] == [(s.path, s.name) for s in direct]
    for s, rec in zip(piped, recs):
        assert s.persons == rec["persons"] and s.record["width"] == rec["width"]
        h, w = read_image(s).shape[:2]
        assert s.persons[0]["box_xyxy"] == [-0.5, -0.5, w - 0.5, h - 0.5]  # the whole picture (pixel centres)
    # the same list from a .jsonl file given as input
    f = photos.parent / "det.jsonl"
    f.write_text(r.stdout)
    assert [(s.path, s.name, s.persons) for s in expand_inputs([str(f)])] == [(s.path, s.name, s.persons) for s in piped]


def test_crop_records_and_events_are_inputs(photos, tmp_path):
    recs = [{"schema": "hmrcli.detections/1", "path": str(photos / "astronaut.png"), "width": 512, "height": 512,
             "persons": [{"box_xyxy": [10, 20, 300, 500], "score": 0.9, "class": "person", "detector": "t"},
                         {"box_xyxy": [300, 20, 500, 500], "score": 0.5, "class": "person", "detector": "t"}]}]
    out = tmp_path / "crops"
    r = runner.invoke(app, ["crop", "-", "-o", str(out), "--json", "-m", "1"],
                      input="".join(json.dumps(x) + "\n" for x in recs))
    assert r.exit_code == 0, r.output
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert events[0]["schema"] == "hmrcli.crop-event/1" and events[0]["persons"] == 2
    assert [b["crops_json"] for b in events[0]["boxes"]] == ["person_00.crops.json", "person_01.crops.json"]
    # crop's stdout (events + summary) as input: the same persons
    (s,) = expand_inputs(["-"], stdin=io.StringIO(r.stdout))
    assert [p["box_xyxy"] for p in s.persons] == [[10.0, 20.0, 300.0, 500.0], [300.0, 20.0, 500.0, 500.0]]
    assert s.name == "astronaut.png" and (s.record["width"], s.record["height"]) == (512, 512)
    # the per-person hmrcli.crops/1 files, one per line, in any order: grouped per image
    files = sorted((out / "astronaut.png").glob("*.crops.json"), reverse=True)
    text = "".join(json.dumps(json.loads(f.read_text())) + "\n" for f in files)
    kind, got = parse_input_text(text, "<t>")
    assert kind == "records" and len(got) == 1
    assert [p["box_xyxy"] for p in got[0]["persons"]] == [[10.0, 20.0, 300.0, 500.0], [300.0, 20.0, 500.0, 500.0]]
    assert got[0]["name"] == "astronaut.png"


def test_bad_stdin_records(photos):
    for text, msg in [("{not json\n", "<stdin>:1: not JSON"),
                      ('{"schema": "hmrcli.camera/1"}\n', "unsupported record schema"),
                      ('{"schema": "hmrcli.detections/1", "path": "a.png", "persons": [{"box_xyxy": [3, 3, 1, 1]}]}\n',
                       "invalid box_xyxy"),
                      ("[1, 2]\n", "JSON list")]:
        with pytest.raises(ValueError, match=msg):
            expand_inputs(["-"], stdin=io.StringIO(text))
    r = runner.invoke(app, ["detect", "-", "-d", "whole-image"], input="{oops\n")
    assert r.exit_code == 2 and "<stdin>:1: not JSON" in r.stderr
    rec = {"schema": "hmrcli.detections/1", "path": str(photos / "astronaut.png"), "width": 512, "height": 512,
           "persons": []}
    r = runner.invoke(app, ["detect", "-", str(photos / "grace hopper ü.jpg")], input=json.dumps(rec) + "\n")
    assert r.exit_code == 2 and "mix records" in r.stderr


def test_coco_on_stdin(photos):
    coco = {"images": [{"id": 1, "file_name": str(photos / "astronaut.png"), "width": 512, "height": 512}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [10, 20, 100, 200]}],
            "categories": [{"id": 1, "name": "person"}]}
    (s,) = expand_inputs(["-"], stdin=io.StringIO(json.dumps(coco, indent=1)))
    assert s.persons[0]["box_xyxy"] == [10.0, 20.0, 110.0, 220.0]


def test_explicit_detector_redetects_record_inputs(photos):
    rec = {"schema": "hmrcli.detections/1", "path": str(photos / "astronaut.png"), "width": 512, "height": 512,
           "persons": [{"box_xyxy": [1, 2, 3, 4], "score": 0.3, "class": "person", "detector": "x"}]}
    r = runner.invoke(app, ["detect", "-"], input=json.dumps(rec) + "\n")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["persons"][0]["box_xyxy"] == [1.0, 2.0, 3.0, 4.0] and "detector: boxes" in r.stderr
    r = runner.invoke(app, ["detect", "-", "-d", "whole-image"], input=json.dumps(rec) + "\n")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["persons"][0]["box_xyxy"] == [-0.5, -0.5, 511.5, 511.5]


# --------------------------------------------------------------------------- shards


def test_shards_partition_the_inputs():
    for n_items in (0, 1, 5, 17, 100):
        items = list(range(n_items))
        for n in (1, 2, 3, 7, 16):
            parts = [shard_sources(items, i, n) for i in range(n)]
            assert sum(parts, []) == items  # union, in order, disjoint
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1
            assert parts == [shard_sources(items, i, n) for i in range(n)]  # deterministic
    assert parse_shard("2/4") == (2, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("4/4", "1/0", "a/b", "1", "-1/3"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_shard_option_on_detect(photos):
    full = runner.invoke(app, ["detect", str(photos), "-d", "whole-image"])
    parts = [runner.invoke(app, ["detect", str(photos), "-d", "whole-image", "--shard", f"{i}/2"]) for i in range(2)]
    assert all(p.exit_code == 0 for p in parts)
    assert parts[0].stdout + parts[1].stdout == full.stdout and parts[0].stdout and parts[1].stdout
    r = runner.invoke(app, ["detect", str(photos), "-d", "whole-image", "--shard", "2/2"])
    assert r.exit_code == 2 and "0..1" in r.output
    r = runner.invoke(app, ["detect", str(photos / "astronaut.png"), "-d", "whole-image", "--shard", "3/5"])
    assert r.exit_code == 0 and r.stdout == "" and "empty" in r.stderr
    for cmd in ("infer", "crop", "detect"):
        h = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert "--shard" in h.stdout and "--frame-stride" in h.stdout


# --------------------------------------------------------------------------- video


@pytest.fixture()
def video(tmp_path):
    p = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    if not w.isOpened():
        pytest.skip("OpenCV cannot write MJPG/AVI video here (no codec)")
    for k in range(10):
        w.write(np.full((48, 64, 3), 20 * k + 10, np.uint8))
    w.release()
    if not cv2.VideoCapture(str(p)).isOpened():
        pytest.skip("OpenCV cannot read back the video it wrote (no FFmpeg?)")
    return p


def test_video_frames_with_stride(video):
    from hmrcli import sources as S

    srcs = expand_inputs([str(video)], frame_stride=3)
    assert [s.name for s in srcs] == [f"clip.avi/frame_{k:06d}.png" for k in (0, 3, 6, 9)]
    assert [s.frame for s in srcs] == [0, 3, 6, 9] and all(s.video == video for s in srcs)
    for s in srcs:  # lazily decoded, by frame index
        img = read_image(s)
        assert img.shape == (48, 64, 3) and abs(int(img[20, 20, 0]) - (20 * s.frame + 10)) <= 3
        assert np.array_equal(read_image(str(s.path)), img)  # the path string works too
    # backwards reads reopen; at most a couple of captures stay open
    assert abs(int(read_image(srcs[0])[5, 5, 1]) - 10) <= 3
    assert len(S._CAPTURES.caps) <= 2
    S.close_videos()
    # a video in a folder is found by content, whatever its name
    d = video.parent / "d"
    d.mkdir()
    shutil.copy(video, d / "movie.bin")
    assert len(expand_inputs([str(d)], frame_stride=5)) == 2
    # a frame past the end is an error, not a crash
    from hmrcli.sources import ImageSource

    bad = ImageSource(Path(f"{video}#frame=99"), "x", video, 99)
    with pytest.raises(ImageReadError, match="past the end"):
        read_image(bad)


def test_broken_video_is_one_error(tmp_path):
    p = tmp_path / "broken.mp4"
    p.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + os.urandom(500))
    (s,) = expand_inputs([str(p)])
    with pytest.raises(ImageReadError, match="video"):
        read_image(s)


def test_video_detect_pipe_crop_equals_direct(video, tmp_path):
    r = runner.invoke(app, ["detect", str(video), "-d", "whole-image", "--frame-stride", "4"])
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(x["frame"], x["name"]) for x in recs] == [(k, f"clip.avi/frame_{k:06d}.png") for k in (0, 4, 8)]
    assert recs[1]["path"] == f"{video}#frame=4" and recs[1]["video"] == str(video)
    out1, out2 = tmp_path / "piped", tmp_path / "direct"
    r1 = runner.invoke(app, ["crop", "-", "-o", str(out1), "-m", "1", "--json"], input=r.stdout)
    r2 = runner.invoke(app, ["crop", str(video), "-o", str(out2), "-m", "1", "-d", "whole-image", "--frame-stride", "4",
                             "--json"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    f1 = sorted(p.relative_to(out1) for p in out1.rglob("*") if p.is_file())
    f2 = sorted(p.relative_to(out2) for p in out2.rglob("*") if p.is_file())
    assert f1 == f2 and len(f1) == 3 * 2
    for f in f1:
        assert (out1 / f).read_bytes() == (out2 / f).read_bytes()


# --------------------------------------------------------------------------- infer




def _tree(out: Path) -> dict:
    """Every output file's bytes, except the manifest (it records per-run settings and times)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "manifest.jsonl"}


def test_detect_pipe_infer_equals_infer_with_detector(photos, tmp_path, constant_checkpoint):
    common = ["--checkpoint", str(constant_checkpoint), "--body-model", "free", "--json", "--device", "cpu"]
    out1, out2, out3 = tmp_path / "piped", tmp_path / "direct", tmp_path / "cropped"
    det = runner.invoke(app, ["detect", str(photos), "-d", "whole-image"])
    assert det.exit_code == 0, det.output
    r1 = runner.invoke(app, ["infer", "-", "--out", str(out1), *common], input=det.stdout)
    assert r1.exit_code == 0, r1.output
    assert "detector: boxes" in r1.stderr
    r2 = runner.invoke(app, ["infer", str(photos), "--out", str(out2), "-d", "whole-image", *common])
    assert r2.exit_code == 0, r2.output
    t1, t2 = _tree(out1), _tree(out2)
    assert sorted(t1) == sorted(t2) and "sub dir/日本.png/person_00.obj" in t1
    assert t1 == t2
    # crop --json | infer -
    cr = runner.invoke(app, ["crop", str(photos), "-o", str(tmp_path / "c"), "-d", "whole-image", "-m", "1", "--json"])
    assert cr.exit_code == 0, cr.output
    r3 = runner.invoke(app, ["infer", "-", "--out", str(out3), *common], input=cr.stdout)
    assert r3.exit_code == 0, r3.output
    assert _tree(out3) == t2
    # shards of infer cover the inputs once
    outs = tmp_path / "sharded"
    for i in range(2):
        r = runner.invoke(app, ["infer", str(photos), "--out", str(outs), "-d", "whole-image", "--shard", f"{i}/2",
                                *common])
        assert r.exit_code == 0, r.output
    assert _tree(outs) == t2
