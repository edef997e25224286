"""Inputs: files, folders, globs, stdin and video frames -> :class:`ImageSource` -> RGB images.

Expanding inputs (:func:`expand_inputs`)
----------------------------------------
* **file** -- taken as given (errors, e.g. a missing file, are reported when it is read). A
  video (recognised by content) becomes one source per kept frame (``frame_stride``); a
  ``.jsonl``/``.json``/``.ndjson`` file whose text starts with ``{`` is a list of records (below).
* **folder** -- walked recursively, sorted by name (per folder: its files, then its
  sub-folders); symlinked folders are followed once (a symlink loop cannot recurse); hidden
  entries (``.name``) and non-regular files (FIFOs, sockets, devices) are skipped. A file is
  an image or a video by its CONTENT (magic bytes), not its extension: ``scan.txt`` holding a
  PNG is an image. A file with an image/video extension whose content is not one (a text file
  named ``.jpg``) and a file that cannot be examined (no permission, symlink loop, dangling
  link) are kept, so that reading it gives a per-file error; other files are skipped.
* **glob** (``*``, ``?``, ``[``; ``**`` recursive) -- each match as a file or folder; names are
  relative to the pattern's folder part. A pattern matching nothing is kept as a (missing) file.
* ``-`` -- stdin: one path (file, folder or glob) per line, or NUL-separated (``find -print0``);
  or JSON lines of records from an earlier stage (``hmrcli.detections/1`` of ``hmrcli detect``,
  ``hmrcli.crop-event/1`` lines of ``hmrcli crop --json``, ``hmrcli.crops/1``), or one COCO
  annotations JSON. Record sources carry their record (:attr:`ImageSource.record`: path, size,
  persons), whose boxes the commands use instead of a detector. See :mod:`hmrcli.records`.

Every source has an output ``name`` (relative, never escaping the output folder: ``..`` and
absolute prefixes are dropped by :func:`hmrcli.records.safe_relative_name`): the path
below a given folder or glob base, else the file name; a video frame is
``<video name>/frame_000123.png`` (frame index, from 0). Names are unique: a clash (``a/x.jpg``
and ``b/x.jpg`` given as files) is resolved with more of the path, then ``~2``, ``~3``...

Sharding (:func:`shard_sources`): ``--shard I/N`` (``0 <= I < N``) keeps the I-th of N
contiguous blocks of the expanded list (block sizes differ by at most one). The list, and so
the split, is deterministic for the same inputs; contiguous blocks keep a video's frames
together, so each job decodes only its stretch of the video.

Reading (:func:`read_image`) -> RGB ``uint8`` (H, W, 3), C-contiguous, or :class:`ImageReadError`
with (file, stage, message):

* EXIF orientation is applied (JPEG, PNG ``eXIf``, WebP ``EXIF``, TIFF): pixels come out as
  a viewer shows them, and ``width``/``height`` are those of the rotated image.
* grey -> RGB; 16-bit -> 8-bit by ``round(v / 257)`` (full range, linear); CMYK JPEG -> RGB
  (OpenCV's conversion); an alpha channel (PNG, WebP) is composited over mid-grey
  (:data:`ALPHA_BACKGROUND` = 128), so transparent cut-outs get a neutral background; other
  formats' alpha is dropped.
* Size limit (:data:`MAX_PIXELS`, 100 megapixels; environment variable ``HMRCLI_MAX_PIXELS``
  overrides): larger images are REFUSED, not downscaled -- the size is read from the file
  header BEFORE decoding (PNG, JPEG, GIF, BMP, WebP, TIFF, PNM/PAM/PFM, Radiance HDR,
  JPEG 2000, Sun raster), so a 20000x20000 image costs no memory. Downscaling was not chosen:
  it needs the full decode for most formats, and boxes given for the image would no longer
  match. Formats whose header is not parsed here are checked after decoding (OpenCV's own
  limit, 2^30 pixels, bounds that decode). Files over :data:`MAX_FILE_BYTES` are refused.
* A JPEG without its end-of-image marker is reported as truncated (older OpenCV versions
  return a half-grey picture for it); a zero-byte file, text, HEIC/AVIF and undecodable data
  get their own messages.
* Video frames are decoded lazily with ``cv2.VideoCapture``: one open capture per video,
  read forward frame by frame (re-opened only to go back), so memory stays flat and the
  frames are exactly those of a sequential decode. A frame source's ``path`` is
  ``<video path>#frame=<index>``; ``read_image`` accepts that string (when no such file
  exists) as well as the :class:`ImageSource`.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import struct
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from hmrcli.records import coco_to_records, parse_input_text, safe_relative_name

__all__ = [
    "ImageSource", "ImageReadError", "ImageInfo", "expand_inputs", "read_image", "decode_image", "probe_image",
    "probe_file", "parse_shard", "shard_sources", "sources_from_records", "video_frame_count",
    "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "RECORD_SUFFIXES", "MAX_PIXELS", "MAX_FILE_BYTES", "ALPHA_BACKGROUND",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".jp2", ".j2k",
                  ".pgm", ".ppm", ".pnm", ".pbm", ".pam", ".pfm", ".hdr", ".pic", ".sr", ".ras", ".gif", ".exr",
                  ".heic", ".heif", ".avif"}
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                  ".wmv", ".flv", ".ogv", ".3gp", ".y4m"}
RECORD_SUFFIXES = {".jsonl", ".json", ".ndjson"}


def _env_int(name: str, default: int) -> int:
    try:
        v = int(os.environ.get(name, "") or default)
        return v if v > 0 else default
    except ValueError:
        return default


#: Largest image accepted, in pixels (width x height after decoding); larger ones are refused.
MAX_PIXELS = _env_int("HMRCLI_MAX_PIXELS", 100_000_000)
#: Largest input file read into memory, in bytes.
MAX_FILE_BYTES = 1 << 30
#: Grey level transparent pixels are composited over.
ALPHA_BACKGROUND = 128

_FRAME_RE = re.compile(r"^(?P<video>.+)#frame=(?P<frame>\d+)$", re.S)


class ImageReadError(ValueError):
    """An input cannot be read as an image. ``file``, ``stage`` ("read") and ``message``
    (which names the file) form the per-file error record (:meth:`record`)."""

    def __init__(self, file: str | os.PathLike, message: str, stage: str = "read") -> None:
        self.file = str(file)
        self.stage = stage
        self.message = f"{self.file}: {message}" if self.file else message
        super().__init__(self.message)

    def record(self) -> dict[str, str]:
        """``{"file", "stage", "message"}`` (the ``hmrcli.error/1`` fields)."""
        return {"file": self.file, "stage": self.stage, "message": self.message}


@dataclass(frozen=True)
class ImageSource:
    """One input image: where it is read from and the name its outputs are filed under.

    ``path``: the file (as given), or ``<video>#frame=<index>`` for a video frame;
    ``name``: relative output name (safe: no ``..``, no absolute path);
    ``video``/``frame``: the video file and frame index of a video frame, else None;
    ``record``: for inputs read from records (stdin, a ``.jsonl``), the normalised
    ``hmrcli.detections/1`` record (``path``, ``width``, ``height``, ``persons``, ...)."""

    path: Path
    name: str
    video: Path | None = None
    frame: int | None = None
    record: dict[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def persons(self) -> list[dict[str, Any]] | None:
        """The person boxes given with this input (``box_xyxy``, ``score``, ...), or None."""
        return None if self.record is None else self.record["persons"]

    def read(self) -> np.ndarray:
        """:func:`read_image` of this source."""
        return read_image(self)


# --------------------------------------------------------------------------- content probing


@dataclass(frozen=True)
class ImageInfo:
    """What the first bytes of a file say. ``kind``: "image", "video", "heif", "text",
    "records" (JSON text) or None (unknown binary). ``format``: "png", "jpeg", ... for images
    ("mp4", "avi", ... for videos). ``width``/``height``: from the image header, before EXIF
    orientation (0 when not parsed). ``alpha``: the image may have an alpha channel."""

    kind: str | None
    format: str | None = None
    width: int = 0
    height: int = 0
    alpha: bool = False


_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis", b"mif2"}


def _video_kind(h: bytes) -> str | None:
    if len(h) >= 12 and h[4:8] == b"ftyp":
        return None if h[8:12] in _HEIF_BRANDS else ("mov" if h[8:12] == b"qt  " else "mp4")
    if h[:4] == b"RIFF" and h[8:12] in (b"AVI ", b"AVIX"):
        return "avi"
    if h[:4] == b"\x1a\x45\xdf\xa3":
        return "mkv"
    if h[:3] == b"FLV":
        return "flv"
    if h[:16] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9\x00\xaa\x00\x62\xce\x6c":
        return "asf"
    if h[:4] == b"OggS":
        return "ogg"
    if h[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "mpeg"
    if h[:9] == b"YUV4MPEG2":
        return "y4m"
    if len(h) > 376 and h[0] == 0x47 and h[188] == 0x47 and h[376] == 0x47:
        return "ts"
    if len(h) >= 12 and h[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip") and h[:2] == b"\x00\x00":
        return "mov"
    return None


def _is_text(h: bytes) -> bool:
    if not h or b"\x00" in h:
        return False
    try:
        h.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        return e.start >= len(h) - 3  # a multi-byte character cut at the end


def probe_image(data: bytes | memoryview | np.ndarray) -> ImageInfo:
    """Recognise an image (format, header size, alpha) or a video from a file's first bytes
    (all of a JPEG's bytes up to its frame header are needed for its size)."""
    if not isinstance(data, (bytes, memoryview)):
        data = memoryview(np.ascontiguousarray(data, dtype=np.uint8).reshape(-1))
    h = bytes(data[:4096])
    try:
        return _probe(h, data)
    except (struct.error, IndexError, ValueError):
        return ImageInfo("image", None)  # a recognised magic with a garbled header: let the decoder say


def _probe(h: bytes, data: Any) -> ImageInfo:
    if h[:8] == b"\x89PNG\r\n\x1a\n":
        w, hh = struct.unpack(">II", h[16:24]) if h[12:16] == b"IHDR" else (0, 0)
        color = h[25] if len(h) > 25 else 0
        alpha = color in (4, 6) or _png_chunk(data, b"tRNS", stop=b"IDAT") is not None
        return ImageInfo("image", "png", w, hh, alpha)
    if h[:3] == b"\xff\xd8\xff":
        w, hh, _ = _jpeg_header(data)
        return ImageInfo("image", "jpeg", w, hh)
    if h[:6] in (b"GIF87a", b"GIF89a"):
        w, hh = struct.unpack("<HH", h[6:10])
        return ImageInfo("image", "gif", w, hh)
    if h[:2] == b"BM" and len(h) >= 26:
        dib = struct.unpack("<I", h[14:18])[0]
        if dib == 12:
            w, hh = struct.unpack("<HH", h[18:22])
            return ImageInfo("image", "bmp", w, hh)
        if dib in (40, 52, 56, 64, 108, 124):
            w, hh = struct.unpack("<ii", h[18:26])
            return ImageInfo("image", "bmp", abs(w), abs(hh))
    if h[:4] == b"RIFF" and h[8:12] == b"WEBP":
        return _webp_info(data)
    if h[:4] in (b"II*\x00", b"MM\x00*"):
        w, hh = _tiff_size(data)
        return ImageInfo("image", "tiff", w, hh)
    if h[:4] in (b"II+\x00", b"MM\x00+"):
        return ImageInfo("image", "tiff")  # BigTIFF: size checked after decoding
    if len(h) >= 3 and h[0:1] == b"P" and h[1:2] in b"1234567" and h[2:3] in b" \t\r\n":
        return _pnm_info(h)
    if h[:3] in (b"PF\n", b"Pf\n", b"PF\r", b"Pf\r"):
        tok = h[3:64].split()
        return ImageInfo("image", "pfm", int(tok[0]), int(tok[1]))
    if h[:10] == b"#?RADIANCE" or h[:6] == b"#?RGBE":
        m = re.search(rb"\n\n([-+])Y (\d+) ([-+])X (\d+)", h)
        return ImageInfo("image", "hdr", int(m.group(4)), int(m.group(2))) if m else ImageInfo("image", "hdr")
    if h[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
        i = h.find(b"ihdr")
        if i >= 0:
            hh, w = struct.unpack(">II", h[i + 4:i + 12])
            return ImageInfo("image", "jp2", w, hh)
        return ImageInfo("image", "jp2")
    if h[:4] == b"\xff\x4f\xff\x51":
        xs, ys, xo, yo = struct.unpack(">IIII", h[8:24])
        return ImageInfo("image", "j2k", xs - xo, ys - yo)
    if h[:4] == b"\x59\xa6\x6a\x95":
        w, hh = struct.unpack(">II", h[4:12])
        return ImageInfo("image", "sunraster", w, hh)
    if h[:4] == b"\x76\x2f\x31\x01":
        return ImageInfo("image", "exr")
    if len(h) >= 12 and h[4:8] == b"ftyp" and h[8:12] in _HEIF_BRANDS:
        return ImageInfo("heif", "avif" if h[8:12] in (b"avif", b"avis") else "heic")
    v = _video_kind(h)
    if v is not None:
        return ImageInfo("video", v)
    if _is_text(h[:1024]):
        return ImageInfo("records" if h.lstrip()[:1] in (b"{", b"[") else "text")
    return ImageInfo(None)


def _png_chunk(data: Any, want: bytes, stop: bytes = b"IEND") -> bytes | None:
    """The payload of the first PNG chunk of type ``want`` before a ``stop`` chunk (None when absent)."""
    n = len(data)
    i = 8
    while i + 8 <= n:
        length = int.from_bytes(bytes(data[i:i + 4]), "big")
        typ = bytes(data[i + 4:i + 8])
        if typ == want:
            return bytes(data[i + 8:i + 8 + length])
        if typ == stop or typ == b"IEND":
            break
        i += 12 + length
    return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_header(data: Any) -> tuple[int, int, int]:
    """(width, height, offset of the first scan's data or -1) by walking the JPEG markers."""
    n = len(data)
    i = 2
    w = hh = 0
    while i + 4 <= n:
        if data[i] != 0xFF:
            return w, hh, -1  # not at a marker: corrupt
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m in (0xD8, 0x01) or 0xD0 <= m <= 0xD7:
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if m in _SOF and i + 9 <= n:
            hh = (data[i + 5] << 8) | data[i + 6]
            w = (data[i + 7] << 8) | data[i + 8]
        if m == 0xDA:
            return w, hh, i + 2 + length
        if m == 0xD9:
            return w, hh, -1
        i += 2 + length
    return w, hh, -1


def _webp_info(data: Any) -> ImageInfo:
    h = bytes(data[:64])
    chunk = h[12:16]
    if chunk == b"VP8X":
        flags = h[20]
        w = 1 + int.from_bytes(h[24:27], "little")
        hh = 1 + int.from_bytes(h[27:30], "little")
        return ImageInfo("image", "webp", w, hh, bool(flags & 0x10))
    if chunk == b"VP8L":
        bits = int.from_bytes(h[21:25], "little")
        return ImageInfo("image", "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1))
    if chunk == b"VP8 ":
        w, hh = struct.unpack("<HH", h[26:30])
        return ImageInfo("image", "webp", w & 0x3FFF, hh & 0x3FFF)
    return ImageInfo("image", "webp")


def _tiff_ifd0(t: Any) -> tuple[str, list[tuple[int, int, int, bytes]]]:
    """Entries (tag, type, count, 4-byte value field) of a TIFF structure's first IFD."""
    end = "<" if bytes(t[:2]) == b"II" else ">"
    off = struct.unpack(end + "I", bytes(t[4:8]))[0]
    count = struct.unpack(end + "H", bytes(t[off:off + 2]))[0]
    out = []
    for k in range(min(count, 512)):
        e = bytes(t[off + 2 + 12 * k: off + 14 + 12 * k])
        if len(e) < 12:
            break
        tag, typ, cnt = struct.unpack(end + "HHI", e[:8])
        out.append((tag, typ, cnt, e[8:12]))
    return end, out


def _tiff_value(end: str, typ: int, val: bytes) -> int:
    return struct.unpack(end + "H", val[:2])[0] if typ == 3 else struct.unpack(end + "I", val)[0]


def _tiff_size(data: Any) -> tuple[int, int]:
    end, entries = _tiff_ifd0(data)
    vals = {tag: _tiff_value(end, typ, val) for tag, typ, cnt, val in entries if tag in (256, 257) and typ in (3, 4)}
    return vals.get(256, 0), vals.get(257, 0)


def _pnm_info(h: bytes) -> ImageInfo:
    if h[1:2] == b"7":
        w = re.search(rb"\nWIDTH\s+(\d+)", h)
        hh = re.search(rb"\nHEIGHT\s+(\d+)", h)
        a = re.search(rb"\nTUPLTYPE\s+\S*_ALPHA", h)
        return ImageInfo("image", "pam", int(w.group(1)) if w else 0, int(hh.group(1)) if hh else 0, bool(a))
    text = re.sub(rb"#[^\n]*", b" ", h[2:256])
    tok = text.split()
    return ImageInfo("image", "pnm", int(tok[0]), int(tok[1]))


def exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (1..8) of a TIFF-structured EXIF block (1 when absent or bad)."""
    try:
        tiff = bytes(tiff)
        if tiff[:6] == b"Exif\x00\x00":
            tiff = tiff[6:]
        if tiff[:4] not in (b"II*\x00", b"MM\x00*"):
            return 1
        end, entries = _tiff_ifd0(tiff)
        for tag, typ, cnt, val in entries:
            if tag == 0x0112 and typ == 3:
                o = struct.unpack(end + "H", val[:2])[0]
                return o if 1 <= o <= 8 else 1
    except (struct.error, IndexError):
        pass
    return 1


#: diagonal of a 36 x 24 mm frame, the reference of EXIF's FocalLengthIn35mmFilm
FULL_FRAME_DIAGONAL_MM = float(np.hypot(36.0, 24.0))


def exif_focal_px(path: str | os.PathLike, width: int, height: int) -> tuple[float, str] | None:
    """Focal length in pixels of a photo from its EXIF data, or None when it has none usable.

    ``width``, ``height``: the decoded image's size (after EXIF orientation). Preferred:
    ``FocalLengthIn35mmFilm`` (mm of a 36x24 mm frame with the same field of view along the
    diagonal): ``f_px = f35 * sqrt(W^2 + H^2) / 43.27``. Otherwise ``FocalLength`` (mm) with
    ``FocalPlaneXResolution`` / ``FocalPlaneResolutionUnit`` (pixels per inch / cm / mm of the
    sensor), scaled from the EXIF image width to the decoded size. Returns
    ``(f_px, description)``. Read with Pillow, which parses the EXIF block only.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        return None
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            sub = exif.get_ifd(0x8769)  # the Exif sub-IFD holds the camera tags
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    if not sub:
        return None
    diag = float(np.hypot(width, height))
    f35 = sub.get(0xA405)
    try:
        if f35 and float(f35) > 0:
            f = float(f35) * diag / FULL_FRAME_DIAGONAL_MM
            return f, f"EXIF FocalLengthIn35mmFilm={float(f35):g} mm"
        fmm, xres, unit = sub.get(0x920A), sub.get(0xA20E), sub.get(0xA210, 2)
        exif_w, exif_h = sub.get(0xA002), sub.get(0xA003)
        if fmm and xres and float(fmm) > 0 and float(xres) > 0 and exif_w and exif_h:
            mm_per_unit = {2: 25.4, 3: 10.0, 4: 1.0}.get(int(unit))
            if mm_per_unit is None:
                return None
            scale = max(width, height) / max(int(exif_w), int(exif_h))
            f = float(fmm) * float(xres) / mm_per_unit * scale
            return f, f"EXIF FocalLength={float(fmm):g} mm, FocalPlaneXResolution={float(xres):g}/unit {int(unit)}"
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return None


def _webp_chunk(data: Any, want: bytes) -> bytes | None:
    n = min(len(data), 8 + int.from_bytes(bytes(data[4:8]), "little"))
    i = 12
    while i + 8 <= n:
        typ = bytes(data[i:i + 4])
        length = int.from_bytes(bytes(data[i + 4:i + 8]), "little")
        if typ == want:
            return bytes(data[i + 8:i + 8 + length])
        i += 8 + length + (length & 1)
    return None


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels into displayed pixels for an EXIF Orientation value (1..8)."""
    if orientation == 2:
        return img[:, ::-1]
    if orientation == 3:
        return img[::-1, ::-1]
    if orientation == 4:
        return img[::-1]
    if orientation == 5:
        return img.swapaxes(0, 1)
    if orientation == 6:
        return img.swapaxes(0, 1)[:, ::-1]
    if orientation == 7:
        return img.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return img.swapaxes(0, 1)[::-1]
    return img


# --------------------------------------------------------------------------- decoding


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
    import cv2

    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise ImageReadError(file, "empty file (0 bytes)")
    info = probe_image(buf)
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
        mv = memoryview(buf)
        _, _, scan = _jpeg_header(mv)
        if scan < 0 or (bytes(mv[-2:]) != b"\xff\xd9" and bytes(mv[scan:]).find(b"\xff\xd9") < 0):
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
    mv = memoryview(buf)
    exif = _png_chunk(mv, b"eXIf") if info.format == "png" else _webp_chunk(mv, b"EXIF")
    if exif:
        rgb = apply_orientation(rgb, exif_orientation(exif))
    return np.ascontiguousarray(rgb)


def _read_bytes(path: Path) -> np.ndarray:
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
            return np.fromfile(path, dtype=np.uint8)
        except OSError as e:
            raise ImageReadError(path, f"cannot read file ({e.strerror or e})") from None
    # a pipe or device given explicitly: read it, up to the size limit
    try:
        chunks, total = [], 0
        with open(path, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                total += len(b)
                if total > MAX_FILE_BYTES:
                    raise ImageReadError(path, f"input too large (> {MAX_FILE_BYTES / 2**20:.0f} MiB)")
                chunks.append(b)
    except OSError as e:
        raise ImageReadError(path, f"cannot read file ({e.strerror or e})") from None
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)


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


# --------------------------------------------------------------------------- video


class _Captures:
    """Open ``cv2.VideoCapture``s (a few, least recently used closed first), each with the
    index of the frame it reads next."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.lock = threading.Lock()
        self.caps: OrderedDict[str, list[Any]] = OrderedDict()

    def read(self, video: Path, frame: int, label: str) -> np.ndarray:
        import cv2

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
    import cv2

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
    import cv2

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


# --------------------------------------------------------------------------- expansion


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
        self.names: set[str] = set()
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
        if info is None:  # FIFO, device, socket
            if explicit:
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
    names: set[str] = set()
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
