"""Header probing through Pillow (hmrcli.sources.probe): formats and header sizes, EXIF
orientation 5-8 (the stored size, not the displayed one), bombs refused from the header even
where Pillow's image reader refuses the file, EXIF read from the headers only (never the whole
file, never a FIFO), and Pillow's own bomb limit neither applied nor changed."""

import io
import os
import struct
import threading
import warnings

import cv2
import numpy as np
import PIL.Image
import pytest
from PIL import ImageOps
from test_sources_robustness import (
    _png_chunk,
    encode,
    exif_tiff,
    huge_jpeg_header,
    huge_png,
    pattern,
    with_exif,
)

from hmrcli.sources import (
    ImageReadError,
    apply_orientation,
    decode_image,
    exif_focal_px,
    exif_orientation,
    probe_file,
    probe_image,
    read_image,
)
from hmrcli.sources import probe as probe_mod
from hmrcli.sources.probe import image_orientation, jpeg_scan_offset

P = pattern(30, 40)


def t(info) -> tuple:
    return (info.kind, info.format, info.width, info.height, info.alpha)


def _pil(arr, fmt, mode=None, **kw) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(arr, mode).save(buf, fmt, **kw)
    return buf.getvalue()


def _exif(orientation=None, f35=None) -> bytes:
    ex = PIL.Image.Exif()
    if orientation:
        ex[0x0112] = orientation
    if f35:
        ex[0x8769] = {0xA405: f35}
    return ex.tobytes()


def _with_crc_error(png: bytes) -> bytes:
    """A tEXt chunk with a wrong CRC right after IHDR: Pillow's reader refuses the file, libpng
    (OpenCV) warns and decodes it."""
    bad = _png_chunk(b"tEXt", b"k\x00v")[:-4] + b"\x00\x00\x00\x00"
    return png[:33] + bad + png[33:]


def _tiff_header(w: int, h: int, bps=(8,), sample_format=1) -> bytes:
    """A little-endian TIFF whose IFD claims w x h (strips: junk, never reached)."""
    spp = len(bps)
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, spp, bps[0] if spp == 1 else 0),
               (262, 3, 1, 2 if spp == 3 else 1), (273, 4, 1, 8), (277, 3, 1, spp), (278, 4, 1, h),
               (279, 4, 1, 16), (339, 3, 1, sample_format)]
    extra = b""
    if spp > 2:  # BitsPerSample values do not fit the entry: an offset after the IFD
        off = 8 + 16 + 2 + 12 * len(entries) + 4
        entries[2] = (258, 3, spp, off)
        extra = struct.pack("<" + "H" * spp, *bps)
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 24) + b"\0" * 16 + ifd + extra


# --------------------------------------------------------------------------- formats and sizes


@pytest.mark.parametrize("ext,fmt", [
    (".png", "png"), (".jpg", "jpeg"), (".bmp", "bmp"), (".tiff", "tiff"), (".ppm", "pnm"), (".pfm", "pfm"),
    (".pam", "pam"), (".hdr", "hdr"), (".sr", "sunraster"), (".webp", "webp"), (".gif", "gif"),
])
def test_formats_and_header_sizes(ext, fmt):
    img = pattern(64, 80)
    if ext in (".pfm", ".hdr"):
        img = img.astype(np.float32) / 255
    assert t(probe_image(encode(img, ext))) == ("image", fmt, 80, 64, False)


def test_more_formats_through_pillow():
    grey = pattern(64, 80)[..., 0]
    for data, fmt in [(encode(grey, ".pgm"), "pnm"), (encode((grey > 99).astype(np.uint8) * 255, ".pbm"), "pnm"),
                      (encode(pattern(64, 80), ".jp2"), "jp2"), (_pil(pattern(64, 80), "JPEG2000", no_jp2=True), "j2k"),
                      (_pil(pattern(64, 80), "TIFF", big_tiff=True), "tiff"),  # BigTIFF: its size is read too
                      (_pil(pattern(64, 80), "MPO", save_all=True, append_images=[PIL.Image.fromarray(P)]), "jpeg")]:
        assert t(probe_image(data)) == ("image", fmt, 80, 64, False), fmt


def test_alpha_flags():
    rgba = np.dstack([P, np.full((30, 40), 255, np.uint8)])
    rgba[:5, :5, 3] = 0
    assert probe_image(encode(rgba)).alpha
    assert probe_image(_pil(P, "PNG", transparency=(1, 2, 3))).alpha  # tRNS chunk
    assert probe_image(_pil(rgba, "WEBP", "RGBA", lossless=True)).alpha
    assert not probe_image(encode(P)).alpha and not probe_image(_pil(P, "WEBP", quality=80)).alpha
    assert not probe_image(_pil(P, "WEBP", lossless=True)).alpha


def test_buffers_and_non_images():
    png = encode(P)
    for data in (png, memoryview(png), np.frombuffer(png, np.uint8), bytearray(png)):
        assert probe_image(data) == probe_image(png)
    # text that starts like a two-letter magic is text, not a PNM or BMP image
    for text in (b"P1 is the first point\n", b"P6x\n", b"Python 3\n", b"BMW cars\n", b"Pf is a name\n"):
        assert probe_image(text).kind == "text", text
    assert probe_image(b'{"image": "a.jpg"}').kind == "records"
    assert probe_image(b"\0\0\0\x18ftypisom" + b"\0" * 64) == probe_image(b"\0\0\0\x18ftypmp42" + b"\0" * 64)
    assert probe_image(b"\0\0\0\x18ftypisom" + b"\0" * 64).kind == "video"
    assert probe_image(b"\0\0\0\x18ftypheic" + b"\0" * 64).kind == "heif"
    assert probe_image(b"\0\0\0\x18ftypavif" + b"\0" * 64).format == "avif"  # not Pillow's AVIF reader
    assert probe_image(b"RIFF\0\0\0\0AVI LIST" + b"\0" * 64).format == "avi"
    assert probe_image(bytes(range(256))).kind is None


def test_damaged_headers_keep_their_format():
    """A recognised magic with a header Pillow's reader refuses: the format stays (the error
    names it), the size is unknown."""
    assert t(probe_image(b"\x89PNG\r\n\x1a\n" + b"\x01" * 64)) == ("image", "png", 0, 0, False)
    assert t(probe_image(b"\xff\xd8\xff\xe0" + b"\x01" * 64)) == ("image", "jpeg", 0, 0, False)
    assert t(probe_image(b"II*\x00\xff\xff\xff\x00" + b"\x01" * 64)) == ("image", "tiff", 0, 0, False)
    with pytest.raises(ImageReadError, match="cannot decode this TIFF file"):
        decode_image(b"II*\x00\xff\xff\xff\x00" + b"\x01" * 64, "x.tif")


# --------------------------------------------------------------------------- EXIF orientation 5-8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_header_size_is_the_stored_one_whatever_the_orientation(orientation, tmp_path):
    """ImageInfo's size is the stored one (before orientation) for every format, as before (Pillow's
    TIFF reader swaps it for 5-8); the decoded image is the displayed one."""
    swapped = orientation >= 5
    want = (40, 30, 3) if swapped else (30, 40, 3)
    files = {"jpg": with_exif(encode(P, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]), orientation),
             "png": _pil(P, "PNG", exif=_exif(orientation)),
             "tif": _pil(P, "TIFF", exif=_exif(orientation)),
             "webp": _pil(P, "WEBP", lossless=True, exif=_exif(orientation))}
    for ext, data in files.items():
        info = probe_image(data)
        assert (info.width, info.height) == (40, 30), ext
        assert image_orientation(data) == orientation, ext
        p = tmp_path / f"o.{ext}"
        p.write_bytes(data)
        assert t(probe_file(p))[2:4] == (40, 30)
        assert read_image(p).shape == want, ext


def test_bomb_refusal_names_the_stored_size_when_orientation_swaps_it(tmp_path):
    p = tmp_path / "tall.jpg"
    huge_jpeg_header(p, 30000, 10000)
    p.write_bytes(with_exif(p.read_bytes(), 6))
    with pytest.raises(ImageReadError, match=r"30000x10000 pixels \(300 megapixels\)"):
        read_image(p)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_is_pillows_exif_transpose(orientation):
    im = PIL.Image.fromarray(P)
    ex = im.getexif()
    ex[0x0112] = orientation
    im.info["exif"] = ex.tobytes()
    want = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(apply_orientation(P, orientation), want)


def test_exif_orientation_blocks():
    for o in range(1, 9):
        assert exif_orientation(exif_tiff(o)) == o
        assert exif_orientation(b"Exif\x00\x00" + exif_tiff(o)) == o
        assert exif_orientation(_exif(o)) == o  # big- or little-endian, as Pillow writes
    assert exif_orientation(exif_tiff(9)) == 1 and exif_orientation(exif_tiff(0)) == 1
    for junk in (b"", b"Exif\x00\x00", b"II*\x00\xff\xff\xff\xff", b"not exif at all", os.urandom(64)):
        assert exif_orientation(junk) == 1


def test_png_exif_after_the_image_data_turns_alpha_images(tmp_path):
    """An eXIf chunk after IDAT (Pillow's reader sees it only by decoding): found by the chunk
    walk, as OpenCV finds it for images without alpha."""
    rgba = np.dstack([P, np.full((30, 40), 255, np.uint8)])
    for img in (rgba, P):
        png = encode(img)
        iend = png.rfind(b"IEND") - 4
        late = png[:iend] + _png_chunk(b"eXIf", exif_tiff(6)) + png[iend:]
        assert image_orientation(late) == 6
        np.testing.assert_array_equal(decode_image(late), np.rot90(P, k=-1))


# --------------------------------------------------------------------------- bombs


def test_bomb_refused_from_the_header_where_pillows_reader_refuses_the_file(tmp_path):
    """A PNG with a bad ancillary CRC (Pillow refuses it, libpng decodes it) and a float RGB TIFF
    (Pillow has no mode for it, OpenCV reads it): the size is still read from the header, and
    a 20000 x 20000 one refused before decoding."""
    big = tmp_path / "huge.png"
    huge_png(big, 20000, 20000)
    cases = {"crc.png": _with_crc_error(big.read_bytes()),
             "float.tif": _tiff_header(20000, 20000, bps=(32, 32, 32), sample_format=3),
             "plain.tif": _tiff_header(20000, 20000)}
    for name, data in cases.items():
        info = probe_image(data)
        assert (info.width, info.height) == (20000, 20000), name
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ImageReadError, match=r"20000x20000 pixels \(400 megapixels\) is over the limit"):
            read_image(p)
    # ... and small ones that Pillow refuses still decode, with their size and alpha from the header
    rgba = np.dstack([P, np.full((30, 40), 255, np.uint8)])
    rgba[:5, :5, 3] = 0
    for img in (P, rgba):
        crc = _with_crc_error(encode(img))
        info = probe_image(crc)
        assert (info.width, info.height, info.alpha) == (40, 30, img is rgba)
        np.testing.assert_array_equal(decode_image(crc), decode_image(encode(img)))
    icc = _pil(rgba, "PNG", "RGBA", icc_profile=b"\0" * 3_000_000)  # over Pillow's 1 MB ICC limit
    assert t(probe_image(icc)) == ("image", "png", 40, 30, True)
    np.testing.assert_array_equal(decode_image(icc), decode_image(encode(rgba)))


def test_pillows_bomb_limit_is_neither_applied_nor_changed(tmp_path, monkeypatch):
    """Our limit (HMRCLI_MAX_PIXELS) decides, from the header; Pillow's MAX_IMAGE_PIXELS is left
    as it is and gives neither a warning nor an error (EXIF is read of any size of image)."""
    before = PIL.Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    p = tmp_path / "huge.jpg"
    huge_jpeg_header(p, 20000, 20000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert t(probe_image(encode(pattern(60, 80))))[2:4] == (80, 60)
        assert t(probe_image(p.read_bytes()))[2:4] == (20000, 20000)
        assert exif_focal_px(p, 20000, 20000) is None  # Pillow's Image.open raised DecompressionBombError here
        q = tmp_path / "s.png"
        q.write_bytes(_pil(P, "PNG", exif=_exif(f35=50)))
        assert read_image(q).shape == (30, 40, 3) and exif_focal_px(q, 40, 30)[0] > 0
    monkeypatch.undo()
    assert PIL.Image.MAX_IMAGE_PIXELS == before


def test_jpeg_scan_offset_and_truncation():
    jpg = with_exif(encode(P, ".jpg"), 6)
    scan = jpeg_scan_offset(jpg)
    sos = jpg.index(b"\xff\xda")
    assert scan == sos + 2 + int.from_bytes(jpg[sos + 2:sos + 4], "big")  # just after the SOS segment
    # cut before the first scan: the header cannot be read
    with pytest.raises(ValueError, match="Truncated"):
        jpeg_scan_offset(jpg[:scan - 4])
    with pytest.raises(ImageReadError, match=r"truncated or corrupt JPEG \(cannot read its header"):
        decode_image(jpg[:scan - 4], "cut.jpg")
    # cut inside the scan: no end-of-image marker after it (the EXIF thumbnail's does not count)
    thumb = jpg[:2] + b"\xff\xfe\x00\x04\xff\xd9" + jpg[2:]  # an EOI inside a comment, before the scan
    with pytest.raises(ImageReadError, match=r"truncated or corrupt JPEG \(no end-of-image marker\)"):
        decode_image(thumb[: len(thumb) - 40], "cut.jpg")
    assert decode_image(thumb).shape == (40, 30, 3)


# --------------------------------------------------------------------------- EXIF read from the headers only


class _Counting(io.FileIO):
    """A file that counts the bytes read from it."""

    total = 0

    def read(self, n=-1):
        b = super().read(n)
        _Counting.total += len(b)
        return b

    def readinto(self, b):
        n = super().readinto(b)
        _Counting.total += n or 0
        return n


def test_exif_focal_reads_the_headers_not_the_file(tmp_path, monkeypatch):
    """Big files (a 20000 x 20000 PNG, a 12 MB noisy JPEG with EXIF): EXIF is found in a few KiB,
    never by reading (or decoding, as Pillow's PNG reader does to look after the data) the file."""
    png = tmp_path / "huge.png"
    huge_png(png, 20000, 20000)
    noise = np.random.default_rng(0).integers(0, 255, (2000, 3000, 3), np.uint8)
    jpg = tmp_path / "noise.jpg"
    jpg.write_bytes(_pil(noise, "JPEG", quality=95, exif=_exif(6, f35=28)))
    late = tmp_path / "late.png"  # eXIf after 2 MB of image data
    data = encode(noise)
    iend = data.rfind(b"IEND") - 4
    late.write_bytes(data[:iend] + _png_chunk(b"eXIf", _exif(f35=50).removeprefix(b"Exif\x00\x00")) + data[iend:])
    monkeypatch.setattr(probe_mod, "open", lambda p, mode="rb": _Counting(p, "r"), raising=False)
    for path, want in ((png, None), (jpg, 28), (late, 50)):
        _Counting.total = 0
        got = exif_focal_px(path, 3000, 2000)
        assert (got is None) if want is None else got[1] == f"EXIF FocalLengthIn35mmFilm={want} mm"
        assert _Counting.total < 64 * 1024, (path.name, _Counting.total, path.stat().st_size)
        assert path.stat().st_size > 1_000_000


def test_exif_focal_from_png_webp_and_tiff(tmp_path):
    for fmt, ext in (("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif"), ("JPEG", "jpg")):
        p = tmp_path / f"a.{ext}"
        p.write_bytes(_pil(P, fmt, exif=_exif(f35=35)))
        f, why = exif_focal_px(p, 40, 30)
        assert f == pytest.approx(35 * 50 / probe_mod.FULL_FRAME_DIAGONAL_MM) and "=35 mm" in why, fmt


def test_exif_focal_never_opens_a_fifo(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    got = []
    t = threading.Thread(target=lambda: got.append(exif_focal_px(fifo, 40, 30)), daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the reader before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("exif_focal_px opened a FIFO and waited for a writer")
    assert got == [None]
    assert exif_focal_px(tmp_path, 1, 1) is None and exif_focal_px(tmp_path / "missing.jpg", 1, 1) is None
