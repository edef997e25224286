"""run_inference's batch behaviour, in-process with a cheap stand-in engine: the manifest and
the re-run rule, stale files, errors.jsonl, stopping, bounded queues."""

import json
import os
import threading

import cv2
import numpy as np
from _pipeline_helpers import StubEngine, output_state

from hmrcli.detect import create_detector
from hmrcli.detect.boxes_backend import BoxesDetector
from hmrcli.detect.whole_image import WholeImageDetector
from hmrcli.pipeline import (
    InferOptions,
    Manifest,
    StopRequest,
    run_inference,
    settings_diff,
)
from hmrcli.sources import expand_inputs


def _images(d, n, size=(24, 32)):
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((*size, 3), (10 + 7 * i) % 256, np.uint8)  # distinct means: the stub engine can fail on one
        cv2.imwrite(str(d / f"img_{i:03d}.png"), img)
    return d


def _run(src_dir, out, engine=None, events=None, **kw):
    sources = expand_inputs([str(src_dir)])
    det = kw.pop("detector", None) or WholeImageDetector()
    stop = kw.pop("stop", None)
    opts = InferOptions(out=out, images_per_step=kw.pop("images_per_step", 3), **kw)
    progress = events.append if events is not None else None
    return run_inference(sources, engine or StubEngine(), opts, progress=progress, detector=det, stop=stop)


def _manifest_lines(out):
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


def test_manifest_records_each_finished_image_and_rerun_skips(tmp_path):
    src = _images(tmp_path / "in", 5)
    out = tmp_path / "out"
    s = _run(src, out)
    assert (s.done, s.failed, s.exit_code) == (5, 0, 0)
    assert s.to_json()["command"] == "infer"
    lines = _manifest_lines(out)
    assert all(x["schema"] == "hmrcli.manifest/1" for x in lines)
    run, images = lines[0], lines[1:]
    assert run["kind"] == "run" and run["settings"]["engine"] == "stub" and run["settings"]["mesh_formats"] == ["obj"]
    assert run["settings"]["detector"]["name"] == "whole-image" and run["hmrcli"]
    assert [x["name"] for x in images] == [f"img_{i:03d}.png" for i in range(5)]
    for x in images:
        assert x["settings_id"] == run["settings_id"] and x["persons"] == 1
        assert x["files"] == ["person_00.obj", "person_00.params.npz", "person_00.camera.json"]
        assert x["input"]["size"] == os.path.getsize(src / x["name"])
        res = json.loads((out / x["name"] / "result.json").read_text())
        assert res["files"] == x["files"] and res["name"] == x["name"]
        # result.json is written after the person files
        assert (out / x["name"] / "result.json").stat().st_mtime_ns >= (out / x["name"] / "person_00.obj").stat().st_mtime_ns

    eng = StubEngine()
    events = []
    s = _run(src, out, eng, events)
    assert (s.done, s.skipped, s.redone) == (0, 5, 0) and eng.runs == []
    assert [e["event"] for e in events] == ["skipped"] * 5
    assert len(_manifest_lines(out)) == 6  # nothing appended by a run that did nothing

    s = _run(src, out, overwrite=True)
    assert (s.done, s.skipped) == (5, 0)


def test_other_settings_are_redone_with_a_reason(tmp_path):
    src = _images(tmp_path / "in", 4)
    out = tmp_path / "out"
    _run(src, out)
    events = []
    s = _run(src, out, events=events, mesh_formats=("obj", "ply"))
    assert (s.done, s.skipped, s.redone) == (4, 0, 4)
    (redo,) = [e for e in events if e["event"] == "redo"]
    assert redo["images"] == 4 and redo["reason"] == "made with other settings: mesh_formats"
    assert all((out / f"img_{i:03d}.png" / "person_00.ply").is_file() for i in range(4))
    # an engine setting (its describe()) is a setting too, and the old value is named
    events = []
    s = _run(src, out, StubEngine(tag="b"), events, mesh_formats=("obj", "ply"))
    assert s.redone == 4 and "model.tag" in [e for e in events if e["event"] == "redo"][0]["reason"]
    # back to the first settings: redone again (the manifest's latest entry is what counts)
    s = _run(src, out, StubEngine(tag="b"), mesh_formats=("obj", "ply"))
    assert (s.skipped, s.done) == (4, 0)
    assert settings_diff({"a": {"b": 1}, "c": 2}, {"a": {"b": 2}, "c": 2, "d": 0}) == ["a.b", "d"]


def test_redo_with_fewer_persons_leaves_no_stale_files(tmp_path):
    src = _images(tmp_path / "in", 1, size=(60, 80))
    out = tmp_path / "out"
    name = "img_000.png"
    boxes = tmp_path / "boxes.jsonl"

    def with_boxes(n):
        rec = {"schema": "hmrcli.detections/1", "path": str(src / name), "width": 80, "height": 60,
               "persons": [{"box_xyxy": [5 * k, 0, 5 * k + 20, 50], "score": 0.9 - 0.1 * k} for k in range(n)]}
        boxes.write_text(json.dumps(rec) + "\n")
        return BoxesDetector(str(boxes))

    s = _run(src, out, detector=with_boxes(3), overlay=True)
    d = out / name
    assert s.persons == 3 and (d / "person_02.obj").is_file() and (d / "overlay.png").is_file()
    (d / "notes.txt").write_text("mine")  # not a file of the layout: left alone
    (d / ".person_00.obj.abc123.tmp").write_bytes(b"left by a kill -9")
    events = []
    s = _run(src, out, events=events, detector=with_boxes(1), overlay=True)  # the boxes changed: redone
    assert s.done == 1 and [e["reason"] for e in events if e["event"] == "redo"] == [
        "the person boxes given for it changed"]
    assert sorted(p.name for p in d.iterdir()) == [
        "notes.txt", "overlay.png", "person_00.camera.json", "person_00.obj", "person_00.params.npz", "result.json"]
    assert json.loads((d / "result.json").read_text())["persons"] == 1
    events = []
    s = _run(src, out, events=events, detector=with_boxes(1))  # no overlay now: it goes
    assert [e["reason"] for e in events if e["event"] == "redo"] == ["made with other settings: overlay"]
    assert sorted(p.name for p in d.iterdir()) == [
        "notes.txt", "person_00.camera.json", "person_00.obj", "person_00.params.npz", "result.json"]


def test_torn_manifest_line_and_missing_entries_are_redone(tmp_path):
    src = _images(tmp_path / "in", 4)
    out = tmp_path / "out"
    _run(src, out)
    man = out / "manifest.jsonl"
    lines = man.read_text().splitlines()
    # a kill -9 while appending the last line: a torn line without its newline
    man.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    assert Manifest(out).bad_lines == 1
    events = []
    s = _run(src, out, events=events)
    assert (s.done, s.skipped) == (1, 3)
    assert [e["reason"] for e in events if e["event"] == "redo"] == [
        "results without a manifest entry (an older hmrcli, or a run killed while finishing the image)"]
    # the next line starts on a new line: only the torn one is unreadable
    m = Manifest(out)
    assert m.bad_lines == 1 and sorted(m.images) == [f"img_{i:03d}.png" for i in range(4)]
    # an input that changed is redone; one whose files were deleted too
    os.utime(src / "img_001.png", ns=(1, 1))
    (out / "img_002.png" / "person_00.obj").unlink()
    events = []
    s = _run(src, out, events=events)
    assert (s.done, s.skipped) == (2, 2)
    assert sorted(e["reason"] for e in events if e["event"] == "redo") == [
        "some of its files are missing", "the input file changed (size or modification time)"]


def test_errors_jsonl_records_and_a_failing_batch_is_split(tmp_path):
    src = _images(tmp_path / "in", 5)
    (src / "img_bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    eng = StubEngine(fail_on={10.0 + 7 * 2})  # image 2's run raises: only image 2 fails
    s = _run(src, out, eng)
    assert (s.done, s.failed, s.exit_code) == (4, 2, 1)
    errs = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert {e["schema"] for e in errs} == {"hmrcli.error/1"}
    assert sorted((os.path.basename(e["file"]), e["stage"]) for e in errs) == [("img_002.png", "stub"),
                                                                                ("img_bad.png", "read")]
    assert not (out / "img_002.png").exists() and not (out / "img_bad.png").exists()
    # a re-run retries the failed images only
    s = _run(src, out)
    assert (s.done, s.skipped, s.failed) == (1, 4, 1)


def test_stop_request_finishes_the_batch_and_a_rerun_completes(tmp_path):
    src = _images(tmp_path / "in", 12)
    ref = tmp_path / "ref"
    _run(src, ref)
    out = tmp_path / "out"
    stop = StopRequest()
    events = []

    def progress(ev):
        events.append(ev)
        if ev["event"] == "done" and ev["name"] == "img_001.png":
            stop.request("SIGTERM")

    sources = expand_inputs([str(src)])
    s = run_inference(sources, StubEngine(), InferOptions(out=out, images_per_step=3), progress=progress,
                      detector=WholeImageDetector(), stop=stop)
    assert s.interrupted == "SIGTERM" and s.exit_code == 143 and s.done == 3  # the batch of 3 was finished
    assert s.remaining == 9 and s.to_json()["remaining"] == 9
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert sorted(p.name for p in out.iterdir()) == [".hmrcli-locks", "img_000.png", "img_001.png", "img_002.png",
                                                     "manifest.jsonl"]
    s = _run(src, out)
    assert (s.done, s.skipped, s.interrupted) == (9, 3, None)
    assert output_state(out) == output_state(ref)


def test_keyboard_interrupt_abandons_the_batch_cleanly(tmp_path):
    src = _images(tmp_path / "in", 9)
    out = tmp_path / "out"

    class Interrupting(StubEngine):
        def run(self, prepared, **kw):
            if len(self.runs) == 1:
                self.runs.append(0)
                raise KeyboardInterrupt
            return super().run(prepared, **kw)

    threads = threading.active_count()
    s = _run(src, out, Interrupting())
    assert s.interrupted == "SIGINT" and s.exit_code == 130 and s.done == 3 and s.remaining == 6
    assert threading.active_count() == threads  # the loader and decoders were joined
    assert sorted(p.name for p in out.iterdir()) == [".hmrcli-locks", "img_000.png", "img_001.png", "img_002.png",
                                                     "manifest.jsonl"]
    s = _run(src, out)
    assert (s.done, s.skipped) == (6, 3)


def test_queues_are_bounded(tmp_path):
    """The loader runs ahead of the engine by a bounded number of images, however many there are."""
    src = _images(tmp_path / "in", 60, size=(8, 8))
    state = {"prepared": 0, "ran": 0, "ahead": 0}

    class Counting(StubEngine):
        def prepare(self, image, persons, focal=None):
            state["prepared"] += 1
            state["ahead"] = max(state["ahead"], state["prepared"] - state["ran"])
            return super().prepare(image, persons, focal)

        def run(self, prepared, **kw):
            import time

            time.sleep(0.01)  # a slow engine: the loader would run away if it could
            state["ran"] += len(prepared)
            return super().run(prepared, **kw)

    s = _run(src, tmp_path / "out", Counting(batch_size=100), images_per_step=4, workers=2)
    assert s.done == 60
    # queue (2 x images_per_step) + the batch being run + the one being put
    assert state["ahead"] <= 2 * 4 + 4 + 2, state


def test_auto_detector_settings_name_the_backend(tmp_path):
    src = _images(tmp_path / "in", 1)
    det = create_detector("whole-image")  # built in: a failure to create it is a bug, not a skip
    _run(src, tmp_path / "out", detector=det, focal=500.0)
    run = _manifest_lines(tmp_path / "out")[0]
    assert run["settings"]["detector"]["name"] == "whole-image" and run["settings"]["focal"] == 500.0


def test_unusable_boxes_are_left_out_and_indices_kept(tmp_path):
    src = _images(tmp_path / "in", 1, size=(60, 80))
    boxes = tmp_path / "boxes.jsonl"
    rec = {"schema": "hmrcli.detections/1", "path": str(src / "img_000.png"), "width": 80, "height": 60,
           "persons": [{"box_xyxy": [0, 0, 30, 50], "score": 0.9}, {"box_xyxy": [40, 10, 40.5, 10.2], "score": 0.8},
                       {"box_xyxy": [40, 0, 70, 50], "score": 0.7}]}
    boxes.write_text(json.dumps(rec) + "\n")
    out = tmp_path / "out"
    events = []
    s = _run(src, out, events=events, detector=BoxesDetector(str(boxes)))
    assert (s.done, s.persons, s.failed) == (1, 2, 0)
    res = json.loads((out / "img_000.png" / "result.json").read_text())
    assert res["person_indices"] == [0, 2] and "person 1" in res["problems"][0]
    assert (out / "img_000.png" / "person_02.obj").is_file() and not (out / "img_000.png" / "person_01.obj").exists()
    (warn,) = [e for e in events if e["event"] == "warning"]
    assert warn["stage"] == "crop" and "too small to reconstruct" in warn["message"]
    err = json.loads((out / "errors.jsonl").read_text())
    assert err["stage"] == "crop" and err["schema"] == "hmrcli.error/1"
