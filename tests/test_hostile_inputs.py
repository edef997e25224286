"""Hostile inputs (issue: farm-proof batches): a FIFO never hangs the run, and the output tree is
never read back as input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"


def _hmrcli(*args, cwd, timeout=180):
    exe = Path(sys.executable).with_name("hmrcli")
    env = {**os.environ, "COLUMNS": "400"}  # one message, one line
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def test_fifo_inputs_are_recorded_not_waited_on(tmp_path, constant_checkpoint):
    d = tmp_path / "in"
    d.mkdir()
    os.mkfifo(d / "f1.jpg")
    shutil.copy(SAMPLES / "grace_hopper.jpg", d / "g.jpg")
    os.mkfifo(tmp_path / "f2.jpg")
    # a FIFO given explicitly, one found in a folder, and a good photo: done within the timeout
    r = _hmrcli("infer", str(tmp_path / "f2.jpg"), str(d), "--out", "o", "--detector", "whole-image",
                "--checkpoint", str(constant_checkpoint), "--json", cwd=tmp_path, timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"]) == (1, 2)
    errs = [json.loads(x) for x in (tmp_path / "o" / "errors.jsonl").read_text().splitlines()]
    assert sorted(Path(e["file"]).name for e in errs) == ["f1.jpg", "f2.jpg"]
    assert all(e["stage"] == "read" and "not a regular file (a FIFO" in e["message"] for e in errs)
    assert (tmp_path / "o" / "g.jpg" / "person_00.obj").is_file()


def test_output_inside_an_input_folder_is_never_read_back(tmp_path, constant_checkpoint):
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(SAMPLES / "astronaut.png", d / "a.png")
    shutil.copy(SAMPLES / "cameraman.png", d / "c.png")
    args = ("infer", str(d), "--out", str(d / "meshes"), "--overlay", "--detector", "whole-image",
            "--checkpoint", str(constant_checkpoint), "--json")
    for run in range(3):
        r = _hmrcli(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
        summary = lines[-1]
        assert summary["images"] == 2, summary  # never the overlays of an earlier run
        assert (summary["done"], summary["skipped"]) == ((2, 0) if run == 0 else (0, 2))
        if run:
            assert any(ev.get("event") == "note" and ev.get("left_out") == 2 for ev in lines)
    overlays = sorted(p.relative_to(d).as_posix() for p in d.rglob("overlay.png"))
    assert overlays == ["meshes/a.png/overlay.png", "meshes/c.png/overlay.png"]


def test_input_named_like_a_bookkeeping_file(tmp_path, constant_checkpoint):
    """`cp G manifest.jsonl; hmrcli infer manifest.jsonl --out O` must not make O/manifest.jsonl a
    folder (the batch aborted with IsADirectoryError); the input gets a longer output name."""
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(SAMPLES / "grace_hopper.jpg", d / "manifest.jsonl")
    shutil.copy(SAMPLES / "cameraman.png", d / "errors.jsonl")
    r = _hmrcli("infer", str(d / "manifest.jsonl"), str(d / "errors.jsonl"), "--out", "O", "--detector",
                "whole-image", "--checkpoint", str(constant_checkpoint), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["done"] == 2
    assert (tmp_path / "O" / "manifest.jsonl").is_file() and (tmp_path / "O" / "in" / "manifest.jsonl").is_dir()
    assert (tmp_path / "O" / "in" / "errors.jsonl" / "person_00.obj").is_file()


def test_symlinked_folder_inside_out_is_never_written_through(tmp_path, constant_checkpoint):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(SAMPLES / "cameraman.png", d / "c.png")
    shutil.copy(SAMPLES / "astronaut.png", d / "a.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep me")
    out = tmp_path / "O"
    out.mkdir()
    os.symlink(elsewhere, out / "c.png")
    r = _hmrcli("infer", str(d), "--out", str(out), "--overwrite", "--detector", "whole-image",
                "--checkpoint", str(constant_checkpoint), "--json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["precious.txt"]
    errs = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errs) == 1 and errs[0]["stage"] == "write" and "symbolic link" in errs[0]["message"]
    assert (out / "a.png" / "person_00.obj").is_file()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo must never run > /dev/null",))


def test_malicious_smpl_pickle_is_one_clear_error(tmp_path, constant_checkpoint):
    import pickle

    d = tmp_path / "smpl"
    d.mkdir()
    with open(d / "SMPL_NEUTRAL.pkl", "wb") as f:
        pickle.dump({"v_template": _Evil()}, f, protocol=2)
    r = _hmrcli("infer", str(SAMPLES / "astronaut.png"), "--out", "o", "--body-model", "smpl", "--smpl-dir", str(d),
                "--checkpoint", str(constant_checkpoint), "--detector", "whole-image", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "SMPL_NEUTRAL.pkl" in errors[0] and "refusing to load 'posix.system'" in errors[0], \
        r.stderr[-2000:]
    doc = _hmrcli("doctor", "--smpl-dir", str(d), "--json", cwd=tmp_path)
    rep = json.loads(doc.stdout)
    smpl = rep["body_models"]["smpl"]
    assert smpl["models"]["neutral"] is None and "SMPL_NEUTRAL.pkl" in smpl["refused"]["neutral"]
    assert any(p["what"] == "SMPL neutral model file" and p["problem"].startswith("refused") for p in rep["problems"])
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.obj"))


def test_ten_thousand_boxes_are_capped_and_noted(tmp_path, constant_checkpoint, monkeypatch):
    """A record with 10,000 boxes and no --max-persons: only the highest-scoring persons up to the
    default cap (100; 5 here, to keep the test short) are reconstructed, and the cut is a recorded
    note, not a failure."""
    from typer.testing import CliRunner

    import hmrcli.pipeline.loader as L
    from hmrcli.cli import app

    assert L.DEFAULT_MAX_PERSONS == 100
    monkeypatch.setattr(L, "DEFAULT_MAX_PERSONS", 5)
    boxes = tmp_path / "boxes.jsonl"
    persons = [{"box_xyxy": [10 + (k % 40) * 10, 10 + (k // 40 % 40) * 10, 60 + (k % 40) * 10, 150 + (k // 40 % 40) * 10],
                "score": round(0.5 + k / 20000, 6)} for k in range(10000)]  # the best ones come last
    boxes.write_text(json.dumps({"schema": "hmrcli.detections/1", "path": str(SAMPLES / "astronaut.png"),
                                 "width": 512, "height": 512, "persons": persons}) + "\n")
    r = CliRunner().invoke(app, ["infer", "--boxes", str(boxes), "--out", str(tmp_path / "o"), "--checkpoint",
                                 str(constant_checkpoint), "--mesh-format", "ply", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert (s["persons"], s["persons_failed"]) == (5, 0), s
    res = json.loads((tmp_path / "o" / "astronaut.png" / "result.json").read_text())
    assert len(res["person_indices"]) == 5 and "10000 persons given or found" in res["problems"][0]
    errs = [json.loads(x) for x in (tmp_path / "o" / "errors.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in errs] == ["detect"]
