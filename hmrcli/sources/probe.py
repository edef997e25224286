"""Content probing from the first bytes: format, size, EXIF orientation and focal length (refuses bombs before decoding)."""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np


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


#: plausible 35 mm-equivalent focal lengths (mm): an 8 mm fisheye to a 2000 mm super-telephoto.
#: EXIF values outside (e.g. 65535, a "not known" filler) are ignored and the reason recorded.
EXIF_F35_RANGE_MM = (8.0, 2000.0)


def exif_focal_px(path: str | os.PathLike, width: int, height: int) -> tuple[float | None, str] | None:
    """Focal length in pixels of a photo from its EXIF data, or None when it has none usable.

    ``width``, ``height``: the decoded image's size (after EXIF orientation). Preferred:
    ``FocalLengthIn35mmFilm`` (mm of a 36x24 mm frame with the same field of view along the
    diagonal): ``f_px = f35 * sqrt(W^2 + H^2) / 43.27``. Otherwise ``FocalLength`` (mm) with
    ``FocalPlaneXResolution`` / ``FocalPlaneResolutionUnit`` (pixels per inch / cm / mm of the
    sensor), scaled from the EXIF image width to the decoded size. Returns
    ``(f_px, description)``, or ``(None, why)`` when the EXIF focal length is implausible (its
    35 mm equivalent outside ``EXIF_F35_RANGE_MM``: the caller then uses its default and records
    why). Read with Pillow, which parses the EXIF block only.
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
            if not EXIF_F35_RANGE_MM[0] <= float(f35) <= EXIF_F35_RANGE_MM[1]:
                return None, f"EXIF FocalLengthIn35mmFilm={float(f35):g} mm ignored (implausible)"
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
            what = f"EXIF FocalLength={float(fmm):g} mm, FocalPlaneXResolution={float(xres):g}/unit {int(unit)}"
            f35_equiv = f * FULL_FRAME_DIAGONAL_MM / diag
            if not EXIF_F35_RANGE_MM[0] <= f35_equiv <= EXIF_F35_RANGE_MM[1]:
                return None, f"{what} ignored (implausible: {f35_equiv:.0f} mm equivalent)"
            return f, what
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
