"""The farm-proof guarantees of ``hmrcli infer`` on a hostile corpus (README, "Guarantees"),
run as a user runs it (a subprocess under umask 022):

* 27 kinds of hostile input mixed with good photos: no batch-wide crash, exactly one
  errors.jsonl record per bad input, every good input complete and readable (mode 0644),
  nothing written outside ``--out`` (which lies inside the input folder: never read back),
  nothing written through a symbolic link inside ``--out``;
* a run on a record with 3,000 persons reports progress per person batch and stops within
  5 s of SIGTERM (exit 143), leaving nothing half-written.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from _pipeline_helpers import SAMPLES, child_env, hmrcli_cmd, shared_checkpoint
from PIL import Image
from test_sources_robustness import encode, huge_png, pattern, with_exif


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_checkpoint(tmp_path_factory)


def _jpeg_exif_focal(path: Path, f35: int) -> None:
    im = Image.fromarray(pattern(60, 80))
    exif = Image.Exif()
    exif[0x8769] = {0xA405: f35}
    im.save(path, exif=exif.tobytes())


def _build(d: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The corpus in ``d``: (good: file name -> output name, bad: file name -> error stage)."""
    good: dict[str, str] = {}
    bad: dict[str, str] = {}
    jpg = encode(pattern(), ".jpg")

    def put(name: str, data: bytes, stage: str | None, out_name: str | None = None) -> None:
        (d / name).write_bytes(data)
        if stage is None:
            good[name] = out_name or name
        else:
            bad[name] = stage

    # bad content (8)
    put("truncated.jpg", jpg[: len(jpg) * 6 // 10], "read")
    put("zero.jpg", b"", "read")
    put("text named.jpg", b"hello, I am not a JPEG\n", "read")
    put("garbage.png", b"\x89PNG\r\n\x1a\n" + os.urandom(200), "read")
    put("random.bmp", b"BM" + os.urandom(300), "read")
    huge_png(d / "bomb.png", 30000, 30000)  # 900 megapixels in the header
    bad["bomb.png"] = "read"
    put("one pixel.png", encode(np.array([[[10, 20, 30]]], np.uint8)), "crop")
    put("broken video.mp4", b"\x00\x00\x00\x18ftypmp42" + os.urandom(500), "read")
    # files that are not regular files, or lead nowhere (4)
    (d / "loop.jpg").symlink_to("loop.jpg")
    bad["loop.jpg"] = "read"
    (d / "dangling.jpg").symlink_to(d / "nowhere.jpg")
    bad["dangling.jpg"] = "read"
    os.mkfifo(d / "fifo.jpg")
    bad["fifo.jpg"] = "read"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.png"))
    bad["sock.png"] = "read"
    # odd but good content (8)
    put("grey.png", encode(np.arange(1200, dtype=np.uint8).reshape(30, 40)), None)
    put("sixteen.png", encode((np.arange(1200, dtype=np.uint16) * 50).reshape(30, 40)), None)
    rgba = np.dstack([pattern(), np.full((30, 40), 255, np.uint8)])
    put("alpha.png", encode(rgba), None)
    buf = io.BytesIO()
    Image.fromarray(pattern()).convert("CMYK").save(buf, "JPEG", quality=95)
    put("cmyk.jpg", buf.getvalue(), None)
    put("rotated exif.jpg", with_exif(jpg, 6), None)
    _jpeg_exif_focal(d / "focal 65535.jpg", 65535)
    good["focal 65535.jpg"] = "focal 65535.jpg"
    put("png inside.txt", encode(pattern()), None)
    put("tall.png", encode(pattern(400, 3)), None)
    # hostile names (6)
    put("manifest.jsonl", jpg, None, out_name="*")  # its output name is checked below: not the bookkeeping file
    put("errors.jsonl", jpg, None, out_name="*")
    os.makedirs(os.fsencode(d), exist_ok=True)
    with open(os.fsencode(d) + b"/a_bad\xff.jpg", "wb") as f:  # not valid UTF-8
        f.write(jpg)
    good["a_bad\udcff.jpg"] = "a_bad\udcff.jpg"
    put("new\nline.png", encode(pattern()), None, out_name="new_line.png")  # control characters replaced
    put("Ünïcödé 日本.png", encode(pattern()), None)
    put("-dash --out.png", encode(pattern()), None)
    # a name whose output folder is a symbolic link planted inside --out (1)
    put("linked.png", encode(pattern()), "write")
    # real photos (2)
    for n in ("grace_hopper.jpg", "cameraman.png"):
        put(n, (SAMPLES / n).read_bytes(), None)
    return good, bad


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every path below ``root`` except ``skip``'s subtree: (size, mtime_ns), links unfollowed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        if Path(os.fsdecode(dirpath)) == skip or Path(os.fsdecode(dirpath)).is_relative_to(skip):
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if Path(os.fsdecode(p)) == skip:
                continue
            st = os.lstat(p)
            out[os.fsdecode(p)] = (st.st_size if not stat.S_ISDIR(st.st_mode) else 0, st.st_mtime_ns)
    return out


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(hmrcli_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=child_env(), preexec_fn=lambda: os.umask(0o022))


def test_hostile_corpus(tmp_path, ckpt):
    d = tmp_path / "photos"
    d.mkdir()
    good, bad = _build(d)
    assert len(good) + len(bad) >= 20 + 2
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep me")
    out = d / "results"  # inside the input folder
    out.mkdir()
    (out / "linked.png").symlink_to(elsewhere, target_is_directory=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = _snapshot(tmp_path, out)
    args = ["infer", str(d), "--out", str(out), "--checkpoint", str(ckpt), "--body-model", "free",
            "--detector", "whole-image", "--json", "--overlay"]
    r = _run(args, cwd)
    assert r.returncode == 1, r.stderr[-3000:]  # some failed, some succeeded: no batch-wide crash
    assert "Traceback" not in r.stderr
    events = [json.loads(x) for x in r.stdout.splitlines()]
    summ = events[-1]
    assert (summ["done"], summ["failed"]) == (len(good), len(bad)), (summ, r.stderr[-3000:])

    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    per_file: dict[str, list[dict]] = {}
    for e in errors:
        per_file.setdefault(os.path.basename(e["file"]), []).append(e)
    assert sorted(per_file) == sorted(bad)  # one record per bad input, none for the good ones
    for name, stage in bad.items():
        (e,) = per_file[name]
        assert e["stage"] == stage and e["message"].startswith(e["file"]), e
    assert "symbolic link inside the output folder" in per_file["linked.png"][0]["message"]

    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    done = {x["image"]: x["name"] for x in lines if x["kind"] == "image"}
    assert len(done) == len(good)
    for fname, out_name in good.items():
        name = done[str(d / fname)]
        if out_name != "*":
            assert name == out_name
        else:  # an input named like a bookkeeping file gets a longer output name
            assert name not in ("manifest.jsonl", "errors.jsonl") and name.endswith(fname)
        res = json.loads((out / name / "result.json").read_text(encoding="utf-8"))
        assert res["persons"] == 1 and res["image"] == str(d / fname)
        assert sorted(res["files"]) == ["overlay.png", "person_00.camera.json", "person_00.obj",
                                        "person_00.params.npz"]
        for f in res["files"]:
            assert (out / name / f).stat().st_size > 0
    for p in out.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p  # readable by group and others under umask 022
        assert not p.name.endswith(".tmp")
    cam = json.loads((out / "focal 65535.jpg" / "person_00.camera.json").read_text())
    assert "65535" in cam["K_source"] and "ignored" in cam["K_source"]

    # nothing written outside --out: not through the link, not in the working directory
    assert sorted(p.name for p in elsewhere.iterdir()) == ["precious.txt"]
    assert not list(cwd.iterdir())
    assert _snapshot(tmp_path, out) == before

    # a re-run reads nothing from --out (its overlays are no inputs), skips the good, retries the bad
    r2 = _run(args, cwd)
    s2 = json.loads(r2.stdout.splitlines()[-1])
    assert (s2["images"], s2["skipped"], s2["failed"], s2["done"]) == (len(good) + len(bad), len(good), len(bad), 0)


def test_many_persons_progress_and_stop_within_5_s(tmp_path, ckpt):
    """3,000 boxes in one record, --max-persons 3000: progress events per person batch on
    stderr, SIGTERM answered within 5 s (exit 143, nothing half-written)."""
    img = SAMPLES / "grace_hopper.jpg"
    w, h = Image.open(img).size
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, [w - 60, h - 120], size=(3000, 2))
    rec = {"schema": "hmrcli.detections/1", "path": str(img), "width": w, "height": h,
           "persons": [{"box_xyxy": [float(x), float(y), float(x) + 50, float(y) + 110], "score": 0.9}
                       for x, y in xy]}
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text(json.dumps(rec) + "\n")
    out = tmp_path / "out"
    args = ["infer", "--boxes", str(boxes), str(img), "--out", str(out), "--checkpoint", str(ckpt),
            "--body-model", "free", "--max-persons", "3000", "--batch-size", "8", "--no-json"]
    p = subprocess.Popen(hmrcli_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=child_env(), preexec_fn=lambda: os.umask(0o022))
    try:
        persons = []
        t_start = time.monotonic()
        for line in p.stderr:
            if line.startswith("{"):
                ev = json.loads(line)
                if ev.get("event") == "persons":
                    persons.append(ev["persons"])
                    if len(persons) == 3:
                        break
            assert time.monotonic() - t_start < 300
        assert persons == [8, 8, 8]  # progress per person batch
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rest = p.stderr.read()
        p.wait(timeout=30)
        stopped_in = time.monotonic() - t0
    finally:
        p.kill()
    assert p.returncode == 143, rest[-2000:]
    assert stopped_in < 5.0, stopped_in
    summ = [json.loads(x) for x in rest.splitlines() if x.startswith("{")][-1]
    assert summ["interrupted"] == "SIGTERM" and summ["remaining"] == 1
    assert not (out / "grace_hopper.jpg" / "result.json").exists()
    assert not [q for q in out.rglob("*") if q.name.endswith(".tmp") or q.name.startswith("person_")]
