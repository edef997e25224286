"""Sequences through the batch pipeline: a folder of frames (named so that only a natural
sort orders them) with two people crossing, an engine that returns their true poses with
noise, and the detector's boxes listed in a random order. Checks the files
(sequence.json, track_XX.npz, the track overlays), the identities, the re-run rule and the
export of the tracks."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from hmrcli import geometry as G
from hmrcli.bench.sequence import sequence_metrics, walking_pair
from hmrcli.body import load_body_model
from hmrcli.detect.boxes_backend import BoxesDetector
from hmrcli.engine.base import PersonEstimate, Prepared
from hmrcli.export.animation import read_animation_npz
from hmrcli.pipeline import InferOptions, run_inference
from hmrcli.pipeline.sequence import SequenceOptions, find_sequences, natural_key
from hmrcli.sources import expand_inputs
from hmrcli.track import SmoothOptions, TrackerOptions

N = 16
WH = (320, 180)


class OracleEngine:
    """Returns, for each person box, the true pose of the person it was drawn from (found by
    the box) with noise on the rotations and the translation."""

    name = "oracle"
    betas_applied = True
    betas_space = "free"
    batch_size = 8

    def __init__(self, body, truth: dict, seed: int = 0) -> None:
        self.body = body
        self.truth = truth  # rounded box -> (rotmats, betas, transl)
        self.rng = np.random.default_rng(seed)

    def describe(self):
        return {"engine": "oracle", "roi_convention": "-", "aggregation": None}

    def prepare(self, image, persons, focal=None, principal=None):
        h, w = image.shape[:2]
        return Prepared(image_wh=(w, h), focal=float(G.default_focal(w, h)), principal=(w / 2, h / 2),
                        problems=[""] * len(persons))

    def run(self, prepared, *, stop=None, on_persons=None):
        out = []
        for prep, persons in prepared:
            ests = []
            for p in persons:
                rot, betas, tr = self.truth[tuple(np.round(p.xyxy, 1))]
                rot = rot @ G.axis_angle_to_rotmat(self.rng.normal(scale=0.05, size=(24, 3)))
                tr = tr + self.rng.normal(scale=0.03, size=3)
                o = self.body(torch.as_tensor(rot[None]), torch.as_tensor(betas[None]))
                w, h = prep.image_wh
                K = G.intrinsics(prep.focal, w, h)
                ests.append(PersonEstimate(box=p, crop_box=np.zeros(3), rois=np.zeros((1, 3)), bbox_info=np.zeros((1, 3)),
                                           cams_local=np.zeros((1, 3)), rotmats=rot, betas=betas, betas_applied=True,
                                           cam_t=tr, K=K, focal=prep.focal, image_wh=(w, h),
                                           vertices_model=o.vertices[0].numpy(), joints_model=o.joints[0].numpy()))
            out.append(ests)
        return out


@pytest.fixture(scope="module")
def body():
    return load_body_model("free")


@pytest.fixture(scope="module")
def scene(body, tmp_path_factory):
    """Frames f0.png .. f15.png, boxes per frame in a random order (the one behind is hidden
    for two frames while they cross), and the truth by box."""
    root = tmp_path_factory.mktemp("seq")
    frames = root / "shot"
    frames.mkdir()
    pair = walking_pair(body, n_frames=N, image_wh=WH, seed=1)
    rng = np.random.default_rng(0)
    truth, records = {}, []
    for k in range(N):
        path = frames / f"f{k}.png"
        cv2.imwrite(str(path), np.full((WH[1], WH[0], 3), 90, np.uint8))
        persons = []
        for p in rng.permutation(2):
            if p == 1 and k in (7, 8):
                continue
            uv = G.project(pair.vertices[p, k], pair.K)
            box = np.round(np.concatenate([uv.min(0), uv.max(0)]), 1)
            truth[tuple(box)] = (pair.rotmats[p, k], pair.betas[p], pair.transl[p, k])
            persons.append({"box_xyxy": box.tolist(), "score": 0.9})
        records.append({"path": str(path), "persons": persons})
    return root, frames, pair, truth, records


def _run(scene, body, out, method="one-euro", overlay=False):
    root, frames, pair, truth, records = scene
    opts = InferOptions(out=out, overlay=False, mesh_formats=("obj",),
                        sequence=SequenceOptions(folders=True, fps=25.0, smooth=SmoothOptions(method=method),
                                                 tracker=TrackerOptions(max_gap=5), overlay=overlay))
    events = []
    summ = run_inference(expand_inputs([str(frames)]), OracleEngine(body, truth), opts, progress=events.append,
                         detector=BoxesDetector(records=records))
    return summ, events


def test_natural_order_of_frames(scene):
    _, frames, *_ = scene
    seqs = find_sequences(expand_inputs([str(frames)]), SequenceOptions(folders=True))
    assert len(seqs) == 1 and seqs[0].name == "" and seqs[0].fps == 30.0 and "assumed" in seqs[0].fps_source
    assert [s.name for s in seqs[0].frames] == [f"f{k}.png" for k in range(N)]
    assert sorted(["a10", "a9", "a100"], key=natural_key) == ["a9", "a10", "a100"]
    # without --sequence a folder of images is no sequence
    assert find_sequences(expand_inputs([str(frames)]), SequenceOptions(folders=False)) == []


def test_a_folder_of_frames_becomes_tracks(scene, body, tmp_path):
    out = tmp_path / "out"
    summ, events = _run(scene, body, out, overlay=True)
    assert summ.exit_code == 0 and summ.sequences == 1 and summ.tracks == 2
    seq = json.loads((out / "sequence.json").read_text())
    assert seq["schema"] == "hmrcli.sequence/1" and seq["fps"] == 25.0 and seq["missing_frames"] == []
    assert [t["id"] for t in seq["tracks"]] == ["track_00", "track_01"]
    assert sorted(t["gaps"] for t in seq["tracks"]) == [[], [[7, 2]]]
    assert seq["smoothing"]["method"] == "one-euro" and seq["smoothing"]["lag"]["causal"] is True
    pair = scene[2]
    tracks = {}
    for t in seq["tracks"]:
        anim = read_animation_npz(out / t["file"])
        assert anim.track_id == t["id"] and anim.fps == 25.0 and anim.body_model == "free"
        assert anim.image_wh == WH and anim.K.shape == (3, 3)
        assert list(anim.frames) == [f for f, _ in t["persons"]]
        j = body(torch.as_tensor(anim.rotmats), torch.as_tensor(np.broadcast_to(anim.betas, (len(anim.frames), 10)).copy())).joints.numpy()
        tracks[t["id"]] = (anim.frames, j + anim.transl[:, None])
    m = sequence_metrics(pair, tracks)
    assert m["identity_switches"] == 0 and m["matched_person_frames"] == 2 * N - 2
    pngs = sorted(p.name for p in (out / "track_overlay").iterdir())
    assert pngs == sorted(f"f{k}.png" for k in range(N))
    img = cv2.imread(str(out / "track_overlay" / "f3.png"))
    assert img.shape == (WH[1], WH[0], 3) and (img != 90).any()
    ev = [e for e in events if e.get("event") == "sequence"]
    assert len(ev) == 1 and ev[0]["tracks"] == 2 and not ev[0]["up_to_date"]

    # the same run again: frames skipped, tracks up to date
    summ2, events2 = _run(scene, body, out, overlay=True)
    ev2 = [e for e in events2 if e.get("event") == "sequence"]
    assert summ2.skipped == N and ev2[0]["up_to_date"] and summ2.tracks == 2
    # other smoothing: tracks redone, frames still skipped, overlays no longer asked for are removed
    before = (out / "track_00.npz").read_bytes()
    summ3, events3 = _run(scene, body, out, method="none")
    ev3 = [e for e in events3 if e.get("event") == "sequence"]
    assert summ3.skipped == N and not ev3[0]["up_to_date"]
    assert (out / "track_00.npz").read_bytes() != before
    assert json.loads((out / "sequence.json").read_text())["smoothing"]["method"] == "none"
    assert not list((out / "track_overlay").glob("*.png"))


def test_a_person_seen_in_too_few_frames_gets_no_track_and_is_listed(scene, body, tmp_path):
    """A stray estimate in one frame (far behind the walkers): no track_02, but listed in
    sequence.json ``short_tracks`` with its frame and person; --min-track-frames 1 keeps it."""
    root, frames, pair, truth, records = scene
    truth, records = dict(truth), [dict(r, persons=list(r["persons"])) for r in records]
    rot, betas, tr = pair.rotmats[0, 3], pair.betas[0], pair.transl[0, 3] * 3.0 + [1.0, 0.0, 0.0]
    uv = G.project(pair.vertices[0, 3] - pair.transl[0, 3] + tr, pair.K)
    box = np.round(np.concatenate([uv.min(0), uv.max(0)]), 1)
    truth[tuple(box)] = (rot, betas, tr)
    records[3]["persons"].append({"box_xyxy": box.tolist(), "score": 0.9})
    stray = len(records[3]["persons"]) - 1
    for min_frames, n_tracks in ((3, 2), (1, 3)):
        out = tmp_path / f"out{min_frames}"
        opts = InferOptions(out=out, overlay=False, mesh_formats=("obj",),
                            sequence=SequenceOptions(folders=True, fps=25.0, smooth=SmoothOptions(method="none"),
                                                     tracker=TrackerOptions(max_gap=5, min_frames=min_frames)))
        events = []
        summ = run_inference(expand_inputs([str(frames)]), OracleEngine(body, truth), opts, progress=events.append,
                             detector=BoxesDetector(records=records))
        seq = json.loads((out / "sequence.json").read_text())
        ev = [e for e in events if e.get("event") == "sequence"]
        assert ev[0]["tracks"] == n_tracks and ev[0]["short_tracks"] == (1 if min_frames == 3 else 0)
        assert summ.tracks == n_tracks and len(seq["tracks"]) == n_tracks and seq["tracker"]["min_frames"] == min_frames
        assert (out / "f3.png" / f"person_{stray:02d}.params.npz").is_file()  # its per-frame result stays
        if min_frames == 3:
            assert seq["short_tracks"] == [{"first_frame": 3, "observed_frames": 1, "persons": [[3, stray]]}]
            assert sorted(p.name for p in out.glob("track_*.npz")) == ["track_00.npz", "track_01.npz"]
        else:
            assert seq["short_tracks"] == [] and [3, stray] in [pp for t in seq["tracks"] for pp in t["persons"]]


def test_a_sequence_that_cannot_be_read_is_recorded(scene, body, tmp_path):
    out = tmp_path / "out"
    _run(scene, body, out, method="none")
    (out / "f4.png" / "person_00.params.npz").write_bytes(b"not an npz")
    (out / "sequence.json").unlink()
    # a re-run skips the frames (their result.json is intact) but cannot track them
    summ, events = _run(scene, body, out, method="none")
    ev = [e for e in events if e.get("event") == "sequence"]
    assert ev[0].get("error") and "f4.png" in ev[0]["error"]
    assert summ.sequences_failed == 1 and summ.exit_code == 1
    errs = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert any(e["stage"] == "track" for e in errs)


def test_export_writes_each_track_as_animation_files(scene, body, tmp_path):
    from typer.testing import CliRunner

    from hmrcli.cli import app
    from hmrcli.export.animation import bvh_text

    out = tmp_path / "out"
    _run(scene, body, out, method="one-euro")
    exp = tmp_path / "exp"
    r = CliRunner().invoke(app, ["export", str(out), "--out", str(exp), "--format", "glb,bvh,npz", "--json"])
    assert r.exit_code == 0, r.output
    summ = json.loads(r.output.strip().splitlines()[-1])
    assert summ["tracks"] == 2 and summ["done"] == 2 and summ["failed"] == 0 and summ["written"] == 6
    assert sorted(p.name for p in exp.iterdir() if p.is_file() and p.name != "errors.jsonl") == [
        "track_00.bvh", "track_00.glb", "track_00.npz", "track_01.bvh", "track_01.glb", "track_01.npz"]
    assert not any(p.is_dir() for p in exp.iterdir())  # the frames of a sequence: as tracks only
    anim = read_animation_npz(exp / "track_01.npz")
    assert (exp / "track_01.bvh").read_text() == bvh_text(body, anim)
    assert (exp / "track_00.glb").read_bytes()[:4] == b"glTF"
    # again: everything exists, nothing written; --frames adds the frames' persons one by one
    r = CliRunner().invoke(app, ["export", str(out), "--out", str(exp), "--format", "glb,bvh", "--json"])
    assert json.loads(r.output.strip().splitlines()[-1])["skipped"] == 2
    r = CliRunner().invoke(app, ["export", str(out), "--out", str(exp), "--format", "npz", "--frames", "--json"])
    assert r.exit_code == 0 and (exp / "f3.png" / "person_00.params.npz").is_file()


def test_bvh_needs_sequences(tmp_path):
    from typer.testing import CliRunner

    from hmrcli.cli import app

    d = tmp_path / "res" / "a.jpg"
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"persons": 0}))
    r = CliRunner().invoke(app, ["export", str(tmp_path / "res"), "--format", "bvh"])
    assert r.exit_code == 2 and "sequence" in r.output


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from _pipeline_helpers import shared_checkpoint

    return shared_checkpoint(tmp_path_factory)


def test_a_video_is_a_sequence_by_default(ckpt, tmp_path):
    """``hmrcli infer clip.avi``: tracks without asking, at the container's frame rate;
    ``--no-sequence`` leaves the frames alone; a bad --smooth is a usage error."""
    from typer.testing import CliRunner

    from hmrcli.cli import app

    clip = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (96, 64))
    for k in range(8):
        img = np.full((64, 96, 3), 60, np.uint8)
        cv2.rectangle(img, (30 + 2 * k, 8), (60 + 2 * k, 60), (200, 180, 160), -1)
        w.write(img)
    w.release()
    common = ["infer", str(clip), "--checkpoint", str(ckpt), "--detector", "whole-image", "--body-model", "free",
              "--json"]
    r = CliRunner().invoke(app, common + ["--out", str(tmp_path / "a"), "--frame-stride", "2"])
    assert r.exit_code == 0, r.output
    summ = json.loads(r.stdout.strip().splitlines()[-1])
    assert summ["done"] == 4 and summ["sequences"] == 1 and summ["tracks"] == 1
    seq = json.loads((tmp_path / "a" / "clip.avi" / "sequence.json").read_text())
    assert seq["fps"] == pytest.approx(12.0) and seq["fps_source"] == "video container"
    assert [f["frame"] for f in seq["frames"]] == [0, 2, 4, 6] and seq["video"] == str(clip)
    anim = read_animation_npz(tmp_path / "a" / "clip.avi" / "track_00.npz")
    assert list(anim.frames) == [0, 2, 4, 6] and anim.fps == pytest.approx(12.0)
    # --min-track-frames: a person seen in fewer frames (here all 4) gets no track, and is listed
    r = CliRunner().invoke(app, common + ["--out", str(tmp_path / "d"), "--frame-stride", "2", "--min-track-frames", "5"])
    assert r.exit_code == 0, r.output
    seq = json.loads((tmp_path / "d" / "clip.avi" / "sequence.json").read_text())
    assert seq["tracks"] == [] and seq["short_tracks"][0]["persons"] == [[0, 0], [2, 0], [4, 0], [6, 0]]
    assert not list((tmp_path / "d" / "clip.avi").glob("track_*.npz"))
    r = CliRunner().invoke(app, common + ["--out", str(tmp_path / "b"), "--no-sequence"])
    assert r.exit_code == 0 and not (tmp_path / "b" / "clip.avi" / "sequence.json").exists()
    r = CliRunner().invoke(app, common + ["--out", str(tmp_path / "c"), "--smooth", "kalman"])
    assert r.exit_code == 2 and "--smooth" in r.output
