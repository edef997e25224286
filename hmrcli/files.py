"""Writing files atomically: the one writer every output, checkpoint and model file goes through.

``atomic_write_bytes`` writes to a uniquely named temporary file in the target folder, fsyncs,
gives it the mode a plain ``open()`` would (0666 minus the process umask: other farm users
and services can read the meshes when the umask allows it) and renames it over the target:
readers never see a partial file, a crash leaves no partial output, and two processes
writing the same file never share a temporary name (the last rename wins).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "current_umask", "write_all", "append_json_line", "json_text"]


def json_text(obj, **kw) -> str:
    """``json.dumps(obj, ensure_ascii=False)`` that is always valid UTF-8: a file name that is not
    valid UTF-8 reaches Python as lone surrogates (``os.fsdecode``), which UTF-8 cannot encode;
    they are written as JSON escapes (``\\udcff``), which ``json.loads`` turns back into the same
    string (``os.fsencode`` then gives the original bytes). Other characters stay as they are."""
    text = json.dumps(obj, ensure_ascii=False, **kw)
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if _has_surrogates(text) else text


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def current_umask() -> int:
    """The process umask, read without changing it where the OS says it (Linux
    ``/proc/self/status``), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            view = memoryview(data)
            while view:  # a short write is not an error: write the rest
                n = f.write(view)
                view = view[n:]
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))  # lone surrogates (undecodable file names) as escapes


def write_all(fd: int, data: bytes) -> None:
    """One ``os.write`` (with O_APPEND: atomic with respect to other appenders); a short write,
    which only a full disk causes, is completed."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def append_json_line(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line to ``path`` (created with the umask's mode): one O_APPEND write,
    so lines of several processes sharing the file never interleave."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json_text(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        write_all(fd, line)
    finally:
        os.close(fd)
