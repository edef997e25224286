"""The one atomic writer: the umask's file mode, no partial files, no temp-name collisions,
appends that never interleave."""

import json
import os
import stat
import threading

import pytest

from hmrcli.files import (
    append_json_line,
    atomic_write_bytes,
    atomic_write_text,
    current_umask,
)


@pytest.fixture()
def umask():
    old = os.umask(0o022)
    try:
        yield lambda m: os.umask(m)
    finally:
        os.umask(old)


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_files_get_the_umasks_mode(tmp_path, umask):
    umask(0o022)
    assert current_umask() == 0o022
    atomic_write_bytes(tmp_path / "a.obj", b"v 0 0 0\n")
    append_json_line(tmp_path / "errors.jsonl", {"x": 1})
    assert _mode(tmp_path / "a.obj") == 0o644 and _mode(tmp_path / "errors.jsonl") == 0o644
    umask(0o077)
    atomic_write_text(tmp_path / "b.json", "{}")
    assert _mode(tmp_path / "b.json") == 0o600
    umask(0o002)
    atomic_write_text(tmp_path / "a.obj", "v 1 1 1\n")  # replacing keeps no stale mode
    assert _mode(tmp_path / "a.obj") == 0o664 and (tmp_path / "a.obj").read_text() == "v 1 1 1\n"


def test_no_temp_files_left_and_failures_leave_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "x.bin"
    atomic_write_bytes(p, b"old")

    class Boom(Exception):
        pass

    def broken_fsync(fd):
        raise Boom

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(Boom):
        atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"old" and sorted(x.name for x in tmp_path.iterdir()) == ["x.bin"]


def test_concurrent_writers_and_appenders(tmp_path):
    p, log = tmp_path / "same.json", tmp_path / "log.jsonl"

    def work(k):
        for i in range(50):
            atomic_write_text(p, json.dumps({"writer": k, "i": i}) * 50)
            append_json_line(log, {"writer": k, "i": i, "pad": "x" * 500})

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    text = p.read_text()
    assert text == json.dumps(json.loads(text[: len(text) // 50])) * 50  # one whole write, not a mix
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 200 and sorted((x["writer"], x["i"]) for x in lines) == [(k, i) for k in range(4) for i in range(50)]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["log.jsonl", "same.json"]
