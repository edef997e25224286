"""Content probing: format, header size, alpha, EXIF orientation and focal length from a file's
headers, never its pixels (too large images are refused before decoding).

Pillow reads the headers and EXIF: its image readers parse a header and stop (pixels are decoded
only by ``load()``, never called here) and ``Image.Exif`` parses EXIF. The readers are called
directly, not through ``Image.open``, which adds Pillow's own bomb limit (a warning above
``Image.MAX_IMAGE_PIXELS``, an error above twice that): the size must be seen whatever it is, to
be checked against ``HMRCLI_MAX_PIXELS``. By hand, only what Pillow cannot do:

* what is no image to Pillow: videos (MP4/MOV, AVI, MKV, ...), HEIF/AVIF (told apart from MP4 by
  the ``ftyp`` brand: OpenCV decodes neither), text and JSON records;
* headers Pillow has no reader for, of formats OpenCV decodes: PAM, PFM, Radiance HDR, OpenEXR;
* WebP: Pillow's only WebP reader is libwebp's decoder, which copies the whole file and allocates
  the whole canvas on opening; the VP8/VP8L/VP8X header and the RIFF chunks are read here;
* a PNG's chunks after the image data (an eXIf may be there), which Pillow reads only by decoding,
  and the header of a PNG or TIFF that Pillow's reader refuses but OpenCV decodes: walked with
  Pillow's chunk and tag readers (:func:`_png_walk`, :func:`_tiff_size`).
"""

from __future__ import annotations

import importlib
import io
import os
import re
import stat
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import IO, Any

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, TiffImagePlugin


@dataclass(frozen=True)
class ImageInfo:
    """What the first bytes of a file say. ``kind``: "image", "video", "heif", "text",
    "records" (JSON text) or None (unknown binary). ``format``: "png", "jpeg", ... for images
    ("mp4", "avi", ... for videos). ``width``/``height``: from the image header, before EXIF
    orientation (0 when not read). ``alpha``: the image may have an alpha channel."""

    kind: str | None
    format: str | None = None
    width: int = 0
    height: int = 0
    alpha: bool = False


# --------------------------------------------------------------------------- by hand: not images to Pillow

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


def _pillowless_image(h: bytes) -> ImageInfo | None:
    """Headers Pillow has no reader for: PAM, PFM (Pillow reads only its own grey variant),
    Radiance HDR, OpenEXR (recognised only)."""
    if h[:2] == b"P7" and len(h) >= 3 and h[2:3] in b" \t\r\n":
        w = re.search(rb"\nWIDTH\s+(\d+)", h)
        hh = re.search(rb"\nHEIGHT\s+(\d+)", h)
        a = re.search(rb"\nTUPLTYPE\s+\S*_ALPHA", h)
        return ImageInfo("image", "pam", int(w.group(1)) if w else 0, int(hh.group(1)) if hh else 0, bool(a))
    if h[:3] in (b"PF\n", b"Pf\n", b"PF\r", b"Pf\r"):
        tok = h[3:64].split()
        return ImageInfo("image", "pfm", int(tok[0]), int(tok[1]))
    if h[:10] == b"#?RADIANCE" or h[:6] == b"#?RGBE":
        m = re.search(rb"\n\n([-+])Y (\d+) ([-+])X (\d+)", h)
        return ImageInfo("image", "hdr", int(m.group(4)), int(m.group(2))) if m else ImageInfo("image", "hdr")
    if h[:4] == b"\x76\x2f\x31\x01":
        return ImageInfo("image", "exr")
    return None


def _is_webp(h: bytes) -> bool:
    return h[:4] == b"RIFF" and h[8:12] == b"WEBP"


def _webp_info(h: bytes) -> ImageInfo:
    """Size and alpha flag from a WebP's first chunk header (VP8X, lossless VP8L or lossy VP8)."""
    chunk = h[12:16]
    if chunk == b"VP8X":
        w = 1 + int.from_bytes(h[24:27], "little")
        hh = 1 + int.from_bytes(h[27:30], "little")
        return ImageInfo("image", "webp", w, hh, bool(h[20] & 0x10))
    if chunk == b"VP8L":
        bits = int.from_bytes(h[21:25], "little")
        return ImageInfo("image", "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1))
    if chunk == b"VP8 ":
        w, hh = struct.unpack("<HH", h[26:30])
        return ImageInfo("image", "webp", w & 0x3FFF, hh & 0x3FFF)
    return ImageInfo("image", "webp")


def _webp_chunk(fp: IO[bytes], want: bytes) -> bytes | None:
    """The payload of a WebP's first RIFF chunk of type ``want`` (None when absent)."""
    size = fp.seek(0, io.SEEK_END)
    fp.seek(4)
    end = min(size, 8 + int.from_bytes(fp.read(4), "little"))
    i = 12
    while i + 8 <= end:
        fp.seek(i)
        head = fp.read(8)
        length = int.from_bytes(head[4:8], "little")
        if head[:4] == want:
            return fp.read(min(length, end - i - 8))
        i += 8 + length + (length & 1)
    return None


# --------------------------------------------------------------------------- through Pillow

#: formats whose headers Pillow reads: Pillow's name -> (ours, Pillow's plugin module). JPEG 2000:
#: "jp2", or "j2k" for a bare codestream
_PILLOW_FORMATS = {"PNG": ("png", "Png"), "JPEG": ("jpeg", "Jpeg"), "GIF": ("gif", "Gif"), "BMP": ("bmp", "Bmp"),
                   "TIFF": ("tiff", "Tiff"), "PPM": ("pnm", "Ppm"), "JPEG2000": ("jp2", "Jpeg2K"),
                   "SUN": ("sunraster", "Sun")}
#: ... whose two-letter magic a text may start with: recognised only when Pillow reads the header
_WEAK_MAGIC = {"BMP", "PPM"}


@lru_cache(maxsize=None)
def _pillow_readers() -> tuple[tuple[str, Any, Any], ...]:
    """(format, reader class, magic test) of Pillow's plugins for :data:`_PILLOW_FORMATS`. JPEG:
    the plain reader, not ``Image.open``'s factory (which also reads an MPO's frame index and
    seeks to its first frame): it stops just after the first SOS segment."""


    out = []
    for fmt, (_, module) in _PILLOW_FORMATS.items():
        importlib.import_module(f"PIL.{module}ImagePlugin")  # registers its reader in Image.OPEN
        cls, accept = Image.OPEN[fmt]
        out.append((fmt, JpegImagePlugin.JpegImageFile if fmt == "JPEG" else cls, accept))
    return tuple(out)


def _pillow_open(fp: IO[bytes]) -> tuple[str | None, Any]:
    """(Pillow format, image) when a reader of :func:`_pillow_readers` reads the header; (format,
    None) when the magic is that format's but its reader refuses the header (damaged, truncated,
    or a variant Pillow does not read); (None, None) when no reader knows the magic."""
    fp.seek(0)
    prefix = fp.read(16)
    for fmt, cls, accept in _pillow_readers():
        if accept is not None and accept(prefix) is True:
            fp.seek(0)
            try:
                return fmt, cls(fp)
            except Exception:  # whatever a damaged header makes a reader raise
                return fmt, None
    return None, None


def _png_walk(fp: IO[bytes]) -> tuple[ImageInfo, bytes | None, bool]:
    """A PNG's chunks through Pillow's chunk reader, seeking over the data: (size and alpha per
    its IHDR and a tRNS before the data, the eXIf payload, whether text chunks follow the data).
    For what Pillow's PNG reader does not give: the chunks after the data (it reads them only by
    decoding) and the header of a file it refuses but libpng decodes (a bad checksum in an
    ancillary chunk, an ICC profile over Pillow's size limit), whose size must still be checked."""

    stream = PngImagePlugin.PngStream(fp)
    size, alpha, exif, text, data = (0, 0), False, None, False, False
    fp.seek(8)
    try:
        while True:
            cid, pos, length = stream.read()
            if cid == b"IHDR":
                stream.call(cid, pos, length)
                size, alpha = stream.im_size, alpha or getattr(stream, "im_mode", None) in ("RGBA", "LA")
            elif cid == b"tRNS" and not data:
                alpha = True
            elif cid == b"eXIf" and exif is None:
                exif = ImageFile._safe_read(fp, length)
            elif cid == b"IEND":
                break
            data = data or cid == b"IDAT"
            text = text or (data and cid in (b"tEXt", b"zTXt", b"iTXt"))
            fp.seek(pos + length + 4)  # the data and its CRC
    except Exception:  # a damaged or missing chunk header ends the walk
        pass
    return ImageInfo("image", "png", size[0], size[1], alpha), exif, text


def _tiff_size(fp: IO[bytes]) -> tuple[int, int]:
    """Width and height tags of a TIFF's first IFD, read with Pillow's tag reader (for a TIFF whose
    sample layout Pillow's image reader refuses but OpenCV decodes, e.g. float RGB)."""

    fp.seek(0)
    head = fp.read(8)
    if 0x2B in head[2:4]:  # BigTIFF: a 16-byte header
        head += fp.read(8)
    ifd = TiffImagePlugin.ImageFileDirectory_v2(head)
    fp.seek(ifd.next)
    ifd.load(fp)
    w, h = ifd.get(256, 0), ifd.get(257, 0)
    return (w, h) if isinstance(w, int) and isinstance(h, int) else (0, 0)


def _pillow_info(data: bytes) -> ImageInfo | None:
    """What Pillow's header readers say of ``data``; None when none of them knows it."""
    fp = io.BytesIO(data)  # shares ``data``: no copy
    fmt, im = _pillow_open(fp)
    if fmt is None or (im is None and fmt in _WEAK_MAGIC):
        return None
    name = "j2k" if fmt == "JPEG2000" and data[:4] == b"\xff\x4f\xff\x51" else _PILLOW_FORMATS[fmt][0]
    if im is None:  # a header Pillow's reader refuses: its size if Pillow's lower readers get it
        if fmt == "PNG":
            return _png_walk(fp)[0]
        try:
            return ImageInfo("image", name, *_tiff_size(fp)) if fmt == "TIFF" else ImageInfo("image", name)
        except Exception:  # a damaged IFD
            return ImageInfo("image", name)
    if fmt == "PPM" and data[1:2] not in (b"1", b"2", b"3", b"4", b"5", b"6"):
        return None  # Pillow's own PPM variants (P0CMYK, PyP, ...): not for OpenCV
    w, h = im.size
    if fmt == "TIFF":  # Pillow's TIFF size is after orientation 5-8 (swapped): ours is the stored one
        w, h = im.tag_v2.get(256, w), im.tag_v2.get(257, h)
    alpha = fmt == "PNG" and (im.mode in ("RGBA", "LA") or "transparency" in im.info)
    return ImageInfo("image", name, w, h, alpha)


# --------------------------------------------------------------------------- probing


def probe_image(data: bytes | memoryview | np.ndarray) -> ImageInfo:
    """Recognise an image (format, header size, alpha) or a video from a file's first bytes
    (a JPEG's size needs all of its bytes up to its first scan; read in place from ``bytes``,
    other buffers are copied)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1).tobytes()
    data = bytes(data)
    h = data[:4096]
    try:
        info = _webp_info(h) if _is_webp(h) else _pillowless_image(h)
    except (struct.error, IndexError, ValueError):
        return ImageInfo("image", None)  # a recognised magic with a garbled header: let the decoder say
    info = info or _pillow_info(data)
    if info is not None:
        return info
    if len(h) >= 12 and h[4:8] == b"ftyp" and h[8:12] in _HEIF_BRANDS:
        return ImageInfo("heif", "avif" if h[8:12] in (b"avif", b"avis") else "heic")
    v = _video_kind(h)
    if v is not None:
        return ImageInfo("video", v)
    if _is_text(h[:1024]):
        return ImageInfo("records" if h.lstrip()[:1] in (b"{", b"[") else "text")
    return ImageInfo(None)


def jpeg_scan_offset(data: bytes) -> int:
    """Offset of a JPEG's first scan data (just after its SOS segment), where Pillow's JPEG header
    reader stops. Raises ValueError (with Pillow's reason) when the header cannot be read:
    truncated before the first scan, damaged, or a variant Pillow does not read (12-bit)."""

    fp = io.BytesIO(data)
    try:
        JpegImagePlugin.JpegImageFile(fp)
    except Exception as e:
        raise ValueError(str(e) or type(e).__name__) from None
    return fp.tell()


# --------------------------------------------------------------------------- EXIF


def exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (1..8) of a TIFF-structured EXIF block, with or without its
    ``Exif\\0\\0`` header (1 when absent or bad), read by Pillow's ``Image.Exif``."""

    try:
        exif = Image.Exif()
        exif.load(bytes(tiff))
        o = exif.get(0x0112, 1)
    except Exception:  # not a TIFF structure, or a damaged one
        return 1
    if isinstance(o, tuple):
        o = o[0] if o else 1
    return o if isinstance(o, int) and 1 <= o <= 8 else 1


def _exif_of(fp: IO[bytes]) -> tuple[str | None, Any, bytes | None, bool]:
    """(format, Pillow's image or None, raw EXIF block or None, PNG text chunks after the data) of
    an encoded image, from its headers: a JPEG's APP1, a PNG's eXIf chunk (before or after the
    data), a WebP's EXIF chunk (a TIFF's EXIF is the file itself)."""
    fp.seek(0)
    if _is_webp(fp.read(16)):
        return "WEBP", None, _webp_chunk(fp, b"EXIF"), False
    fmt, im = _pillow_open(fp)
    raw = im.info.get("exif") if im is not None else None
    if fmt == "PNG" and raw is None:
        _, raw, late_text = _png_walk(fp)
        return fmt, im, raw, late_text
    return fmt, im, raw, False


def image_orientation(data: bytes) -> int:
    """The EXIF Orientation (1..8) of an encoded image (1 when none): from a PNG's eXIf chunk, a
    WebP's EXIF chunk, a JPEG's APP1 segment or a TIFF's first IFD; the pixels are not read."""
    fmt, _, raw, _ = _exif_of(io.BytesIO(data))
    if fmt == "TIFF":
        return exif_orientation(data)  # a TIFF is a TIFF-structured block itself
    return exif_orientation(raw) if raw else 1


def _camera_tags(path: str | os.PathLike) -> dict | None:
    """The Exif sub-IFD (camera tags) of a regular file, or None; only its headers are read (a
    FIFO or a device is never opened: opening a FIFO waits for a writer)."""

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as fp:
            fmt, im, raw, late_text = _exif_of(fp)
            if im is not None and (fmt == "TIFF" or (raw is None and fmt == "PNG" and (
                    late_text or "Raw profile type exif" in im.info))):
                exif = im.getexif()  # a TIFF's own IFDs; or an ImageMagick text chunk, which Pillow decodes for
            elif raw is None:
                return None
            else:
                exif = Image.Exif()
                exif.load(raw)
            return exif.get_ifd(0x8769)
    except Exception:  # unreadable, or damaged headers: no EXIF
        return None


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
    why). Read with Pillow, which parses the headers and the EXIF block only.
    """
    sub = _camera_tags(path)
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


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels into displayed pixels for an EXIF Orientation value (1..8), as
    ``PIL.ImageOps.exif_transpose`` does (views of the array, no copy)."""
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
