"""The bad-input corpus end to end through ``hmrcli infer``: every bad file gets one
errors.jsonl record and the batch goes on, every good file gets complete outputs, nothing
is written outside --out."""

import io
import json
import os

import cv2
import numpy as np
import pytest
from _pipeline_helpers import shared_checkpoint
from test_sources_robustness import corpus, encode, pattern, with_exif  # noqa: F401  (corpus: a fixture)
from typer.testing import CliRunner

from hmrcli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_checkpoint(tmp_path_factory)


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _more_inputs(d, files):
    """Add to the robustness corpus: alpha, CMYK, EXIF-rotated, a symlink loop, an unreadable file."""
    rgba = np.dstack([pattern(), np.full((30, 40), 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    (d / "alpha.png").write_bytes(encode(rgba))
    files["alpha.png"] = True
    (d / "rotated exif.jpg").write_bytes(with_exif(encode(pattern(), ".jpg"), 6))
    files["rotated exif.jpg"] = True
    try:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(pattern()).convert("CMYK").save(buf, "JPEG", quality=95)
        (d / "cmyk.jpg").write_bytes(buf.getvalue())
        files["cmyk.jpg"] = True
    except ImportError:
        pass
    (d / "loop.jpg").symlink_to("loop.jpg")
    files["loop.jpg"] = False
    if os.geteuid() != 0:  # root reads a chmod 000 file anyway
        (d / "locked.png").write_bytes(encode(pattern()))
        (d / "locked.png").chmod(0)
        files["locked.png"] = False


def test_bad_input_corpus_through_infer(corpus, ckpt, tmp_path, monkeypatch):  # noqa: F811
    d, files = corpus
    _more_inputs(d, files)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # anything written relative to the working directory would land here
    before = _tree(tmp_path)
    out = tmp_path / "out"
    r = runner.invoke(app, ["infer", str(d), "--checkpoint", str(ckpt), "--detector", "whole-image",
                            "--body-model", "free", "--out", str(out), "--json"])
    try:
        assert r.exit_code == 1, r.output  # some failed, some succeeded
        events = [json.loads(x) for x in r.stdout.splitlines()]
        summary = events[-1]
        # a 1x1 image decodes, but its whole-image box (0x0 px) cannot be cropped: a "crop" error
        too_small = sorted(n for n in files if n.startswith("one pixel"))
        good = sorted(n for n, ok in files.items() if ok and n not in too_small)
        bad = sorted(n for n, ok in files.items() if ok is False or n in too_small)
        assert summary["command"] == "infer" and summary["failed"] == len(bad), (summary, r.stderr)
        assert summary["done"] == len(good) and summary["images"] == len(good) + len(bad)

        errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
        assert sorted(os.path.basename(e["file"]) for e in errors) == bad  # one record per bad file
        for e in errors:
            stage = "crop" if os.path.basename(e["file"]) in too_small else "read"
            assert e["schema"] == "hmrcli.error/1" and e["stage"] == stage and e["message"].startswith(e["file"])
            if stage == "crop":
                assert "too small to reconstruct (image 1x1 px)" in e["message"]
        assert sorted(e["file"] for e in events if e.get("event") == "error") == sorted(e["file"] for e in errors)

        for name in good:
            res = json.loads((out / name / "result.json").read_text())
            assert res["persons"] == 1
            assert sorted(res["files"]) == ["person_00.camera.json", "person_00.obj", "person_00.params.npz"]
            assert all((out / name / f).stat().st_size > 0 for f in res["files"])
        for name in bad:
            assert not (out / name).exists()
        cam = json.loads((out / "rotated exif.jpg" / "person_00.camera.json").read_text())
        assert (cam["image"]["width"], cam["image"]["height"]) == (30, 40)  # EXIF orientation applied
        assert _tree(tmp_path) == sorted(before + [x for x in _tree(tmp_path) if x == "out" or x.startswith("out/")])
        assert not list(cwd.iterdir())
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

        # a re-run redoes only the failed ones (and they fail again, once each)
        r = runner.invoke(app, ["infer", str(d), "--checkpoint", str(ckpt), "--detector", "whole-image",
                                "--body-model", "free", "--out", str(out), "--json"])
        s = json.loads(r.stdout.splitlines()[-1])
        assert (s["skipped"], s["failed"], s["done"]) == (len(good), len(bad), 0)
    finally:
        if (d / "locked.png").exists():
            (d / "locked.png").chmod(0o644)


def test_a_name_that_tries_to_leave_the_output_folder(ckpt, tmp_path, monkeypatch):
    img = tmp_path / "in" / "x.png"
    img.parent.mkdir()
    cv2.imwrite(str(img), np.zeros((40, 30, 3), np.uint8))
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    rec = {"schema": "hmrcli.detections/1", "path": str(img), "name": "../../../escaped.png", "width": 30, "height": 40,
           "persons": [{"box_xyxy": [2, 2, 28, 38], "score": 0.9}]}
    out = tmp_path / "a" / "out"
    r = runner.invoke(app, ["infer", "-", "--checkpoint", str(ckpt), "--body-model", "free", "--out", str(out),
                            "--json"], input=json.dumps(rec) + "\n")
    assert r.exit_code == 0, r.output
    assert (out / "escaped.png" / "result.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "in"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b", "out"]
    assert not list(cwd.iterdir())


def test_progress_modes(ckpt, tmp_path):
    """--json: events + summary on stdout; stderr not a terminal without --json: the same events
    as JSON lines on stderr with rates; --quiet: the summary only."""
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        cv2.imwrite(str(d / f"{i}.png"), np.full((40, 30, 3), 100, np.uint8))
    (d / "bad.png").write_bytes(b"nope")
    args = ["infer", str(d), "--checkpoint", str(ckpt), "--detector", "whole-image", "--body-model", "free"]

    r = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--json", "--quiet"])
    assert r.exit_code == 1
    (line,) = r.stdout.splitlines()
    assert json.loads(line)["schema"] == "hmrcli.summary/1"

    r = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--no-json"])
    assert r.exit_code == 1 and r.stdout == ""
    log = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    # progress inside the engine: one "persons" event per batch of persons (here one batch of 2)
    assert [e["persons"] for e in log if e.get("event") == "persons"] == [2]
    log = [e for e in log if e.get("event") != "persons"]
    # events come as images finish: a read error can come before the batch ahead of it
    assert sorted(e.get("event") for e in log[:-1]) == ["done", "done", "error"]
    assert [e["completed"] for e in log[:-1]] == [1, 2, 3] and all(e["total"] == 3 for e in log[:-1])
    assert all(e["images_per_s"] > 0 for e in log[:-1]) and log[1]["persons_per_s"] > 0
    assert log[-1]["schema"] == "hmrcli.summary/1" and log[-1]["failed"] == 1

    r = runner.invoke(app, [*args, "--out", str(tmp_path / "c"), "--no-json", "--quiet"])
    lines = r.stderr.splitlines()
    assert r.stdout == "" and json.loads(lines[-1])["done"] == 2
    assert [json.loads(x)["event"] for x in lines[:-1] if x.startswith("{")] == ["error"]  # errors only
