"""A file name that is not valid UTF-8 (bytes 0xff) survives the whole batch and the
`detect | infer -` round trip (issue: farm-proof batches, item 1)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"
BAD = os.fsdecode(b"a_bad\xff.jpg")  # a lone surrogate in Python, the raw byte on disk


def _run(args, cwd, stdin=None):
    exe = Path(sys.executable).with_name("hmrcli")
    return subprocess.run([str(exe), *args], capture_output=True, cwd=cwd, input=stdin, timeout=300)


def test_undecodable_file_name_does_not_abort_the_batch(tmp_path, constant_checkpoint):
    d = tmp_path / "u"
    d.mkdir()
    shutil.copy(SAMPLES / "grace_hopper.jpg", d / BAD)
    shutil.copy(SAMPLES / "cameraman.png", d / "z_good.png")
    common = ["--detector", "whole-image", "--checkpoint", str(constant_checkpoint), "--json"]
    for _ in range(2):  # the re-run reads the manifest it wrote
        r = _run(["infer", str(d), "--out", "uo", *common], tmp_path)
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
        out = r.stdout.decode("utf-8")  # valid UTF-8 (the name travels as a JSON escape)
        assert json.loads(out.strip().splitlines()[-1])["images"] == 2
    assert (tmp_path / "uo" / BAD / "person_00.obj").is_file()
    assert (tmp_path / "uo" / "z_good.png" / "person_00.obj").is_file()
    for line in (tmp_path / "uo" / "manifest.jsonl").read_bytes().splitlines():
        json.loads(line.decode("utf-8"))
    # detect writes valid UTF-8 JSON lines whose paths name the very file; infer - reads them
    det = _run(["detect", str(d), "--detector", "whole-image"], tmp_path)
    assert det.returncode == 0, det.stderr.decode(errors="replace")[-2000:]
    recs = [json.loads(x) for x in det.stdout.decode("utf-8").splitlines()]
    assert [os.path.basename(x["path"]) for x in recs] == [BAD, "z_good.png"]
    assert os.path.exists(os.fsencode(recs[0]["path"]))
    r = _run(["infer", "-", "--out", "uo2", *common], tmp_path, stdin=det.stdout)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert json.loads(r.stdout.decode("utf-8").strip().splitlines()[-1])["done"] == 2
