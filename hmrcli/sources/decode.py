"""Decoding inputs to RGB uint8: image files or bytes (grey, 16-bit, alpha, CMYK, EXIF
orientation) and video frames (lazily opened captures, frame counts)."""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hmrcli.sources.base import (
    _FRAME_RE,
    ALPHA_BACKGROUND,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    ImageReadError,
    ImageSource,
)
from hmrcli.sources.probe import (
    apply_orientation,
    image_orientation,
    jpeg_scan_offset,
    probe_image,
)


def _to8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if a.dtype.kind == "f":
        return (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    info = np.iinfo(a.dtype)
    return ((a.astype(np.float64) - info.min) * (255.0 / (info.max - info.min)) + 0.5).astype(np.uint8)


def _composite(img: np.ndarray) -> np.ndarray:
    """BGRA / grey+alpha (any depth) -> RGB uint8 over :data:`ALPHA_BACKGROUND`, in row blocks
    so that the temporaries stay small."""
    h = img.shape[0]
    out = np.empty((h, img.shape[1], 3), np.uint8)
    top = 1.0 if img.dtype.kind == "f" else float(np.iinfo(img.dtype).max)
    step = max(1, (1 << 22) // max(1, img.shape[1]))
    for r in range(0, h, step):
        blk = img[r:r + step].astype(np.float32) / top
        a = blk[..., -1:]
        col = blk[..., :-1]
        if col.shape[-1] == 1:
            col = np.repeat(col, 3, axis=-1)
        else:
            col = col[..., ::-1]  # BGR -> RGB
        mix = col * a + (ALPHA_BACKGROUND / 255.0) * (1.0 - a)
        out[r:r + step] = (np.clip(mix, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out


def decode_image(data: bytes | np.ndarray, file: str | os.PathLike = "<bytes>", max_pixels: int | None = None
                 ) -> np.ndarray:
    """Decode an encoded image (file bytes) to RGB uint8 (H, W, 3); see the module docstring
    for orientation, depth, alpha and the size limit. Raises :class:`ImageReadError`."""

    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if isinstance(data, np.ndarray):
        buf = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
        raw = buf.tobytes()  # the headers are read from bytes: one copy of an array given
    else:
        raw = bytes(data)  # no copy of bytes
        buf = np.frombuffer(raw, dtype=np.uint8)
    if buf.size == 0:
        raise ImageReadError(file, "empty file (0 bytes)")
    info = probe_image(raw)
    if info.kind == "video":
        raise ImageReadError(file, f"a video ({info.format}) that OpenCV cannot open or that has no frames; "
                                   "check `hmrcli doctor` for FFmpeg support, or convert it (e.g. to H.264 MP4)")
    if info.kind == "heif":
        raise ImageReadError(file, f"{info.format.upper()} images cannot be decoded by OpenCV: convert to JPEG or PNG")
    if info.kind in ("text", "records"):
        raise ImageReadError(file, "not an image: the file holds text")
    if info.width and info.height and info.width * info.height > limit:
        raise ImageReadError(file, f"image too large: {info.width}x{info.height} pixels "
                                   f"({info.width * info.height / 1e6:.0f} megapixels) is over the limit of "
                                   f"{limit / 1e6:g} megapixels (HMRCLI_MAX_PIXELS); downscale it first")
    if info.format == "jpeg":
        try:
            scan = jpeg_scan_offset(raw)
        except ValueError as e:
            raise ImageReadError(file, f"truncated or corrupt JPEG (cannot read its header: {e})") from None
        if raw[-2:] != b"\xff\xd9" and raw.find(b"\xff\xd9", scan) < 0:
            raise ImageReadError(file, "truncated or corrupt JPEG (no end-of-image marker)")
    unchanged = info.alpha and info.format in ("png", "webp")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED if unchanged else cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise ImageReadError(file, f"cannot decode ({str(e).strip().splitlines()[-1]})") from None
    if img is None or img.size == 0:
        what = (f"cannot decode this {info.format.upper()} file (corrupt or truncated data, or a variant OpenCV "
                "cannot read)" if info.format else "not an image (unknown format)")
        raise ImageReadError(file, what)
    if img.shape[0] * img.shape[1] > limit:
        raise ImageReadError(file, f"image too large: {img.shape[1]}x{img.shape[0]} pixels is over the limit of "
                                   f"{limit / 1e6:g} megapixels (HMRCLI_MAX_PIXELS)")
    if not unchanged:
        if img.ndim == 2:
            img = cv2.cvtColor(_to8(img), cv2.COLOR_GRAY2RGB)
        else:
            img = cv2.cvtColor(_to8(img[..., :3]), cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(img)
    if img.ndim == 2:
        rgb = cv2.cvtColor(_to8(img), cv2.COLOR_GRAY2RGB)
    elif img.shape[2] in (2, 4):
        rgb = _composite(img)
    else:
        rgb = cv2.cvtColor(_to8(img[..., :3]), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(apply_orientation(rgb, image_orientation(raw)))


def _read_bytes(path: Path) -> bytes:
    try:
        st = os.stat(path)
    except OSError as e:
        raise ImageReadError(path, f"cannot read file ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        try:
            os.listdir(path)
        except OSError as e:
            raise ImageReadError(path, f"cannot list the folder ({e.strerror or e})") from None
        raise ImageReadError(path, "is a folder, not an image")
    if stat.S_ISREG(st.st_mode):
        if st.st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        if st.st_size > MAX_FILE_BYTES:
            raise ImageReadError(path, f"file too large ({st.st_size / 2**20:.0f} MiB > {MAX_FILE_BYTES / 2**20:.0f} MiB)")
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise ImageReadError(path, f"cannot read file ({e.strerror or e})") from None
    # a FIFO, socket or device: refused without opening it (opening a FIFO blocks until a writer
    # comes, which would hang the loader and with it the whole batch)
    kind = "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else (
        "a socket" if stat.S_ISSOCK(st.st_mode) else "a device or other special file")
    raise ImageReadError(path, f"not a regular file ({kind}): refused. Give image files, or pipe paths or "
                               "JSON lines to `-` (stdin)")


def read_image(source: str | os.PathLike | ImageSource, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file, a video frame (an :class:`ImageSource` of a frame, or the path
    string ``<video>#frame=<index>``) or any :class:`ImageSource` to RGB uint8 (H, W, 3).
    Raises :class:`ImageReadError` (file, stage "read", message)."""
    if isinstance(source, ImageSource):
        if source.video is not None and source.frame is not None:
            return _read_frame(source.video, source.frame, str(source.path), max_pixels)
        source = source.path
    path = Path(source)
    m = _FRAME_RE.match(str(path))
    if m and not os.path.lexists(path) and os.path.isfile(m.group("video")):
        return _read_frame(Path(m.group("video")), int(m.group("frame")), str(path), max_pixels)
    return decode_image(_read_bytes(path), path, max_pixels)


class _Captures:
    """Open ``cv2.VideoCapture``s (a few, least recently used closed first), each with the
    index of the frame it reads next."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.lock = threading.Lock()
        self.caps: OrderedDict[str, list[Any]] = OrderedDict()

    def read(self, video: Path, frame: int, label: str) -> np.ndarray:

        key = os.path.abspath(video)
        with self.lock:
            ent = self.caps.pop(key, None)
            if ent is not None and ent[1] > frame:
                ent[0].release()
                ent = None
            if ent is None:
                cap = cv2.VideoCapture(str(video))
                if not cap.isOpened():
                    cap.release()
                    raise ImageReadError(label, "cannot open the video")
                ent = [cap, 0]
            cap = ent[0]
            try:
                while ent[1] < frame:
                    if not cap.grab():
                        raise ImageReadError(label, f"frame {frame} is past the end of the video "
                                                    f"(it has {ent[1]} frames)")
                    ent[1] += 1
                ok, img = cap.read()
                if not ok or img is None:
                    raise ImageReadError(label, f"frame {frame} cannot be decoded (past the end of the video?)")
                ent[1] += 1
            except ImageReadError:
                cap.release()
                raise
            self.caps[key] = ent
            while len(self.caps) > self.size:
                _, (old, _) = self.caps.popitem(last=False)
                old.release()
        return img

    def close(self) -> None:
        with self.lock:
            for cap, _ in self.caps.values():
                cap.release()
            self.caps.clear()


_CAPTURES = _Captures()


def _read_frame(video: Path, frame: int, label: str, max_pixels: int | None) -> np.ndarray:

    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        img = _CAPTURES.read(video, frame, label)
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(label, f"cannot decode the frame ({type(e).__name__}: {e})") from None
    if img.shape[0] * img.shape[1] > limit:
        raise ImageReadError(label, f"frame too large: {img.shape[1]}x{img.shape[0]} pixels")
    if img.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(_to8(img), cv2.COLOR_GRAY2RGB))
    return np.ascontiguousarray(cv2.cvtColor(_to8(img[..., :3]), cv2.COLOR_BGR2RGB))


def video_frame_count(video: str | os.PathLike) -> int:
    """Frames in a video per its container (``CAP_PROP_FRAME_COUNT``), counted by decoding
    when the container does not say; 0 when OpenCV cannot open it."""

    cap = cv2.VideoCapture(str(video))
    try:
        if not cap.isOpened():
            return 0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if n <= 0:
            n = 0
            while cap.grab():
                n += 1
        return n
    finally:
        cap.release()


def close_videos() -> None:
    """Release the video captures :func:`read_image` keeps open."""
    _CAPTURES.close()
