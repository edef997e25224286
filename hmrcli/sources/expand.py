"""Input expansion: files, folders, globs, videos, record files and stdin -> ``ImageSource`` lists; shards."""

from __future__ import annotations

import glob
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, Iterable

from hmrcli.records import coco_to_records, parse_input_text, safe_relative_name
from hmrcli.sources.base import (
    _FRAME_RE,
    IMAGE_SUFFIXES,
    RECORD_SUFFIXES,
    VIDEO_SUFFIXES,
    ImageSource,
)
from hmrcli.sources.decode import video_frame_count
from hmrcli.sources.probe import ImageInfo, probe_image

#: names at the top of an output folder that hold hmrcli's bookkeeping (hmrcli.pipeline): an input
#: whose output name would be one of them gets a longer name instead
RESERVED_NAMES = frozenset({"manifest.jsonl", "errors.jsonl", ".hmrcli-locks"})


def probe_file(path: str | os.PathLike) -> ImageInfo | None:
    """:func:`probe_image` of a regular file's first bytes; None for a non-regular file;
    raises OSError when the file cannot be examined."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        return None
    if st.st_size == 0:
        return ImageInfo(None)
    with open(path, "rb") as f:
        head = f.read(4096)
    info = probe_image(head)
    if info.format == "jpeg" and not info.width:  # frame header beyond the first 4 KiB (big EXIF/ICC)
        with open(path, "rb") as f:
            info = probe_image(f.read(1 << 20))
    return info


def _glob_base(pattern: str) -> str:
    parts = Path(pattern).parts
    base = []
    for p in parts:
        if any(c in p for c in "*?["):
            break
        base.append(p)
    return str(Path(*base)) if base else "."


class _Collector:
    def __init__(self, frame_stride: int, stdin: Any) -> None:
        self.safe = safe_relative_name
        self.stride = max(1, int(frame_stride))
        self.stdin = stdin
        self.out: list[ImageSource] = []
        self.seen: set[tuple[str, int | None]] = set()
        self.names: set[str] = set(RESERVED_NAMES)  # an input never takes a bookkeeping file's name
        self.used_stdin = False

    def unique(self, name: str, path: str) -> str:
        try:
            name = self.safe(name)
        except ValueError:
            name = f"input_{len(self.out):06d}"
        if name not in self.names:
            return name
        parts = Path(os.path.abspath(path)).parts[1:]
        for k in range(len(Path(name).parts) + 1, len(parts) + 1):
            try:
                cand = self.safe(str(Path(*parts[-k:])))
            except ValueError:
                continue
            if cand not in self.names:
                return cand
        k = 2
        while f"{name}~{k}" in self.names:
            k += 1
        return f"{name}~{k}"

    def add(self, path: Path, name: str, video: Path | None = None, frame: int | None = None,
            record: dict[str, Any] | None = None, exact: bool = False) -> None:
        key = (os.path.abspath(video if video is not None else path), frame)
        if key in self.seen:
            return
        self.seen.add(key)
        if not exact:
            name = self.unique(name, str(video if video is not None else path))
        self.names.add(name)
        self.out.append(ImageSource(path, name, video, frame, record))

    def add_video(self, path: Path, name: str) -> None:
        if (os.path.abspath(path), 0) in self.seen or (os.path.abspath(path), None) in self.seen:
            return
        n = video_frame_count(path)
        if n <= 0:  # cannot be opened: one source, whose reading says why
            self.add(path, name)
            return
        base = self.unique(name, str(path))
        self.names.add(base)  # reserved: another input of the same name gets a longer one
        digits = max(6, len(str(n - 1)))
        for k in range(0, n, self.stride):
            self.add(Path(f"{path}#frame={k}"), f"{base}/frame_{k:0{digits}d}.png", video=path, frame=k, exact=True)

    def add_file(self, path: Path, name: str, explicit: bool) -> None:
        try:
            info = probe_file(path)
        except OSError:
            self.add(path, name)  # cannot be examined: reading it reports why
            return
        if info is None:  # FIFO, device, socket: kept, so that reading refuses it and the run records it
            self.add(path, name)
            return
        suffix = path.suffix.lower()
        if info.kind == "video" or (info.kind is None and suffix in VIDEO_SUFFIXES):
            self.add_video(path, name)
        elif info.kind == "records" and suffix in RECORD_SUFFIXES and explicit:
            with open(path, encoding="utf-8", errors="replace") as f:
                self.add_text(f.read(), str(path))
        elif explicit or info.kind in ("image", "heif") or suffix in IMAGE_SUFFIXES:
            self.add(path, name)

    def walk(self, root: Path) -> None:
        visited: set[tuple[int, int]] = set()

        def rec(d: Path) -> None:
            try:
                st = os.stat(d)
                key = (st.st_dev, st.st_ino)
                if key in visited:
                    return  # a symlink back up the tree: already walked
                visited.add(key)
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                self.add(d, str(d.relative_to(root)) if d != root else d.name)
                return
            dirs = []
            for e in entries:
                if e.name.startswith("."):
                    continue
                p = Path(e.path)
                try:
                    is_dir = e.is_dir()  # follows symlinks
                except OSError:
                    is_dir = False
                if is_dir:
                    dirs.append(p)
                else:
                    self.add_file(p, str(p.relative_to(root)), explicit=False)
            for p in dirs:
                rec(p)

        rec(root)

    def add_text(self, text: str, source: str) -> None:
        kind, items = parse_input_text(text, source)
        if kind == "paths":
            for item in items:
                self.item(item)
            return
        if kind == "coco":
            items = coco_to_records(items, source)
        for s in sources_from_records(items):
            self.add(s.path, s.name, s.video, s.frame, s.record)

    def item(self, item: str) -> None:
        if item == "-":
            if self.used_stdin:
                return
            self.used_stdin = True
            stream = self.stdin if self.stdin is not None else sys.stdin
            data = stream.read()
            if isinstance(data, bytes):
                data = data.decode("utf-8", errors="surrogateescape")
            self.add_text(data, "<stdin>")
            return
        p = Path(item)
        if p.is_dir():
            self.walk(p)
        elif any(c in item for c in "*?[") and not os.path.lexists(p):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                self.add(p, p.name)  # reading it says "no such file"
            base = _glob_base(item)
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    self.walk(mp)
                else:
                    self.add_file(mp, os.path.relpath(m, base), explicit=False)
        else:
            self.add_file(p, p.name, explicit=True)


def expand_inputs(inputs: Iterable[str], frame_stride: int = 1, stdin: Any = None) -> list[ImageSource]:
    """The sources of files, folders, globs, ``-`` (stdin, or the ``stdin`` stream given) and
    record files, in order (duplicates once); videos become frames (every ``frame_stride``-th).
    See the module docstring. Raises ValueError for unreadable record input (bad JSON lines)."""
    c = _Collector(frame_stride, stdin)
    for item in inputs:
        c.item(str(item))
    return c.out


def sources_from_records(records: Iterable[dict[str, Any]]) -> list[ImageSource]:
    """``ImageSource``s for ``hmrcli.detections/1``-style records (each keeps its record).
    Output names: the record's ``name`` when given (what ``hmrcli detect`` writes), else the
    path as written when relative, else the path below the records' common folder. Video
    frames (``path`` ``<video>#frame=<k>``, or ``video`` + ``frame`` fields) read the frame."""
    recs = list(records)
    merged: dict[str, dict[str, Any]] = {}
    for rec in recs:  # the same path twice: the later record wins (as the boxes backend does)
        merged[str(rec["path"])] = rec
    paths = list(merged)
    absolute = [p for p in paths if os.path.isabs(_FRAME_RE.sub(r"\g<video>", p))]
    base = None
    if absolute:
        dirs = [os.path.dirname(_FRAME_RE.sub(r"\g<video>", p)) for p in absolute]
        base = os.path.commonpath(dirs) if len(dirs) > 1 else dirs[0]
    out: list[ImageSource] = []
    names: set[str] = set(RESERVED_NAMES)
    for k, p in enumerate(paths):
        rec = merged[p]
        video = frame = None
        m = _FRAME_RE.match(p)
        if rec.get("video") is not None and rec.get("frame") is not None:
            video, frame = Path(str(rec["video"])), int(rec["frame"])
        elif m and not os.path.lexists(p):
            video, frame = Path(m.group("video")), int(m.group("frame"))
        if rec.get("name"):
            name = str(rec["name"])
        else:
            stem = str(video) if video is not None else p
            name = os.path.relpath(stem, base) if (base is not None and os.path.isabs(stem)) else stem
            if video is not None:
                name = f"{name}/frame_{frame:06d}.png"
        try:
            name = safe_relative_name(name)
        except ValueError:
            name = f"input_{k:06d}"
        n0, j = name, 2
        while name in names:
            name, j = f"{n0}~{j}", j + 1
        names.add(name)
        out.append(ImageSource(Path(p), name, video, frame, rec))
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N. Raises ValueError with a usable message."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"expected I/N (shard I of N, 0 <= I < N), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise ValueError(f"the number of shards must be at least 1, got {n}")
    if i >= n:
        raise ValueError(f"shard index {i} is out of range: shards are numbered 0..{n - 1}")
    return i, n


def shard_sources(sources: list[ImageSource], index: int, count: int) -> list[ImageSource]:
    """Shard ``index`` of ``count`` (0-based): the index-th of ``count`` contiguous blocks
    of ``sources`` (sizes differ by at most one). The blocks partition the list."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"bad shard {index}/{count}")
    n = len(sources)
    return list(sources[index * n // count:(index + 1) * n // count])
