"""Reading inputs: a corpus of bad and unusual files, generated in tmp_path. Every bad file
gives an error with (file, stage, message); every good file decodes to RGB uint8."""

import io
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from hmrcli.detect import detect_sources
from hmrcli.detect.whole_image import WholeImageDetector
from hmrcli.sources import (
    ALPHA_BACKGROUND,
    ImageReadError,
    apply_orientation,
    decode_image,
    exif_orientation,
    expand_inputs,
    probe_image,
    read_image,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"


# --------------------------------------------------------------------------- corpus makers


def _png_chunk(typ: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + typ + data + struct.pack(">I", zlib.crc32(typ + data) & 0xFFFFFFFF)


def huge_png(path: Path, w: int, h: int) -> None:
    """A w x h 8-bit grey PNG of zeros, written row by row (never the whole image in memory)."""
    comp = zlib.compressobj(1)
    row = b"\x00" * (w + 1)  # filter byte + pixels
    parts = [comp.compress(row) for _ in range(h)]
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))


def huge_jpeg_header(path: Path, w: int, h: int) -> None:
    """A JPEG whose frame header claims w x h (the scan data is junk, never reached)."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00"
    path.write_bytes(b"\xff\xd8" + sof + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x00" * 64 + b"\xff\xd9")


def exif_tiff(orientation: int) -> bytes:
    """A minimal little-endian TIFF block with one IFD entry: Orientation."""
    return (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
            + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0))


def with_exif(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment right after SOI (by hand: no Pillow needed)."""
    payload = b"Exif\x00\x00" + exif_tiff(orientation)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def png_with_exif(png: bytes, orientation: int) -> bytes:
    """Insert an eXIf chunk right after IHDR."""
    end_ihdr = 8 + 8 + 13 + 4
    return png[:end_ihdr] + _png_chunk(b"eXIf", exif_tiff(orientation)) + png[end_ihdr:]


def pattern(h=30, w=40):
    """An asymmetric colour test image (RGB)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // (w - 1)), (y * 255 // (h - 1)), ((x + 2 * y) % 256)], -1).astype(np.uint8)
    img[:6, :6] = (255, 0, 0)
    return img


def encode(rgb_or_grey, ext=".png", params=()):
    img = rgb_or_grey
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


@pytest.fixture()
def corpus(tmp_path):
    """name -> (path, good?) for a folder of good and bad inputs."""
    d = tmp_path / "corpus"
    d.mkdir()
    files = {}

    def put(name, data, good):
        (d / name).write_bytes(data)
        files[name] = good

    jpg = encode(pattern(), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    put("good.jpg", jpg, True)
    put("truncated.jpg", jpg[: len(jpg) * 6 // 10], False)
    put("zero.jpg", b"", False)
    put("text named.jpg", b"hello, I am not a JPEG at all\n", False)
    put("one pixel.png", encode(np.array([[[10, 20, 30]]], np.uint8)), True)
    put("one pixel.jpg", encode(np.array([[[10, 20, 30]]], np.uint8), ".jpg"), True)
    put("grey.png", encode(np.arange(1200, dtype=np.uint8).reshape(30, 40)), True)
    put("png inside.txt", encode(pattern()), True)  # content, not extension
    put("sixteen.png", encode((np.arange(1200, dtype=np.uint16) * 50).reshape(30, 40)), True)
    put("Ünïcödé 日本.png", encode(pattern()), True)
    put("garbage.png", b"\x89PNG\r\n\x1a\n" + os.urandom(200), False)
    put("random.bmp", os.urandom(300), False)
    put("notes.md", b"# not an input: skipped in folders\n", None)
    huge_png(d / "huge.png", 20000, 20000)
    files["huge.png"] = False
    return d, files


# --------------------------------------------------------------------------- tests


def test_corpus_good_files_decode_and_bad_files_give_error_records(corpus):
    d, files = corpus
    sources = expand_inputs([str(d)])
    names = [s.name for s in sources]
    assert "notes.md" not in names  # neither image content nor image extension: skipped
    assert sorted(names) == sorted(n for n, good in files.items() if good is not None)
    for s in sources:
        good = files[s.name]
        if good:
            img = read_image(s)
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.flags.c_contiguous
        else:
            with pytest.raises(ImageReadError) as ei:
                read_image(s)
            rec = ei.value.record()
            assert rec["file"] == str(s.path) and rec["stage"] == "read"
            assert rec["message"].startswith(str(s.path) + ": ") and len(rec["message"]) > len(str(s.path)) + 10
    # ... and through the batch reader every bad file is one error, the batch goes on
    res = list(detect_sources(sources, WholeImageDetector(), batch_size=4))
    assert [r.source.name for r in res] == names
    for r in res:
        if files[r.source.name]:
            assert r.error is None and r.detections
        else:
            stage, msg = r.error
            assert stage == "read" and str(r.source.path) in msg


@pytest.mark.parametrize("name,needle", [
    ("truncated.jpg", "truncated"), ("zero.jpg", "empty file"), ("text named.jpg", "holds text"),
    ("garbage.png", "corrupt or truncated"), ("huge.png", "too large"), ("random.bmp", "not an image"),
])
def test_error_messages_say_what_is_wrong(corpus, name, needle):
    d, _ = corpus
    with pytest.raises(ImageReadError, match=needle):
        read_image(d / name)


def test_one_pixel_grey_and_16_bit(corpus):
    d, _ = corpus
    assert read_image(d / "one pixel.png").tolist() == [[[10, 20, 30]]]
    assert read_image(d / "one pixel.jpg").shape == (1, 1, 3)
    grey = read_image(d / "grey.png")
    want = np.arange(1200, dtype=np.uint8).reshape(30, 40)
    for c in range(3):
        np.testing.assert_array_equal(grey[..., c], want)
    v16 = (np.arange(1200, dtype=np.uint16) * 50).reshape(30, 40)
    img = read_image(d / "sixteen.png")
    assert img.dtype == np.uint8
    np.testing.assert_allclose(img[..., 0].astype(int), np.round(v16 / 257.0), atol=1)


def test_png_content_in_a_txt_file(corpus):
    d, _ = corpus
    np.testing.assert_array_equal(read_image(d / "png inside.txt"), pattern())
    assert probe_image((d / "png inside.txt").read_bytes()).format == "png"


def test_huge_image_refused_from_header_without_allocating(tmp_path):
    big = tmp_path / "huge.png"
    huge_png(big, 20000, 20000)
    assert big.stat().st_size < 2_000_000
    info = probe_image(big.read_bytes())
    assert (info.width, info.height) == (20000, 20000)
    hj = tmp_path / "huge.jpg"
    huge_jpeg_header(hj, 20000, 20000)
    for p in (big, hj):
        with pytest.raises(ImageReadError, match=r"20000x20000 pixels .*over the limit"):
            read_image(p)
    # peak memory of a fresh process reading both, against one that only imports
    code = textwrap.dedent(f"""
        import resource, sys
        from hmrcli.sources import read_image, ImageReadError
        import cv2, numpy
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.argv[1] == "read":
            for p in ({str(big)!r}, {str(hj)!r}):
                try:
                    read_image(p)
                except ImageReadError:
                    pass
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    grow = int(subprocess.run([sys.executable, "-c", code, "read"], capture_output=True, text=True, env=env,
                              check=True).stdout.split()[-1])
    assert grow < 200 * 1024, f"reading a refused 20000x20000 image grew the peak RSS by {grow / 1024:.0f} MiB"


def test_size_limit_is_configurable(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(encode(pattern(30, 40)))
    with pytest.raises(ImageReadError, match="too large"):
        read_image(p, max_pixels=1000)
    assert read_image(p, max_pixels=1200).shape == (30, 40, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(tmp_path, orientation):
    """OpenCV applies the JPEG's EXIF orientation: pixels come out as a viewer shows them,
    equal to the stored pixels turned by hand."""
    jpg = encode(pattern(), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    stored = read_image_bytes(jpg)
    p = tmp_path / f"o{orientation}.jpg"
    p.write_bytes(with_exif(jpg, orientation))
    assert exif_orientation(b"Exif\x00\x00" + exif_tiff(orientation)) == orientation
    img = read_image(p)
    np.testing.assert_array_equal(img, apply_orientation(stored, orientation))
    if orientation == 6:  # 90 degrees clockwise: the red top-left corner goes to the top right
        assert img.shape == (40, 30, 3)
        np.testing.assert_array_equal(img, np.rot90(stored, k=-1))
        assert tuple(img[0, -1]) == tuple(stored[0, 0])


def read_image_bytes(data: bytes) -> np.ndarray:
    return decode_image(data, "<test>")


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_png_with_alpha(tmp_path, orientation):
    """The alpha path decodes unchanged and turns the pixels itself (PNG eXIf chunk)."""
    rgba = np.dstack([pattern(), np.full((30, 40), 255, np.uint8)])
    rgba[-5:, -5:, 3] = 0
    png = encode(rgba)
    flat = read_image_bytes(png)
    p = tmp_path / "a.png"
    p.write_bytes(png_with_exif(png, orientation))
    np.testing.assert_array_equal(read_image(p), apply_orientation(flat, orientation))
    # without alpha OpenCV turns it: same convention
    q = tmp_path / "b.png"
    q.write_bytes(png_with_exif(encode(pattern()), orientation))
    np.testing.assert_array_equal(read_image(q), apply_orientation(pattern(), orientation))


def test_alpha_is_composited_over_grey(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = (200, 10, 50)
    rgba[:, :2, 3] = 0
    rgba[:, 2:4, 3] = 255
    rgba[:, 4:, 3] = 128
    p = tmp_path / "alpha.png"
    p.write_bytes(encode(rgba))
    img = read_image(p)
    assert img.shape == (4, 6, 3)
    assert (img[:, :2] == ALPHA_BACKGROUND).all()
    assert (img[:, 2:4] == (200, 10, 50)).all()
    a = 128 / 255
    want = np.round(np.array([200, 10, 50]) * a + ALPHA_BACKGROUND * (1 - a))
    np.testing.assert_allclose(img[:, 4:].reshape(-1, 3), np.tile(want, (8, 1)), atol=1)
    # 16-bit grey + alpha
    la = np.zeros((3, 3, 2), np.uint16)
    la[..., 0] = 65535
    la[..., 1] = 65535
    la[0, 0, 1] = 0
    q = tmp_path / "la16.png"
    q.write_bytes(encode(np.dstack([la[..., 0]] * 3 + [la[..., 1]])))
    img = read_image(q)
    assert img[0, 0].tolist() == [ALPHA_BACKGROUND] * 3 and img[1, 1].tolist() == [255, 255, 255]


def test_cmyk_jpeg(tmp_path):
    import PIL.Image as PIL  # Pillow is a core dependency: no skip
    rgb = pattern()
    buf = io.BytesIO()
    PIL.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=95)
    p = tmp_path / "cmyk.jpg"
    p.write_bytes(buf.getvalue())
    img = read_image(p)
    assert img.shape == (30, 40, 3) and img.dtype == np.uint8
    # the red corner stays red (CMYK -> RGB, not inverted, not swapped)
    r, g, b = img[2, 2].astype(int)
    assert r > 200 and g < 50 and b < 50
    assert np.abs(img.astype(int) - rgb.astype(int)).mean() < 12


def test_webp_and_tiff_with_alpha_or_exif(tmp_path):
    import PIL.Image as PIL  # Pillow is a core dependency: no skip
    rgba = np.dstack([pattern(), np.full((30, 40), 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    buf = io.BytesIO()
    PIL.fromarray(rgba, "RGBA").save(buf, "WEBP", lossless=True)
    img = decode_image(buf.getvalue(), "x.webp")
    assert (img[:10, :10] == ALPHA_BACKGROUND).all()
    np.testing.assert_array_equal(img[10:, 10:], pattern()[10:, 10:])
    ex = PIL.Exif()
    ex[0x0112] = 6
    buf = io.BytesIO()
    PIL.fromarray(pattern()).save(buf, "TIFF", exif=ex.tobytes())
    np.testing.assert_array_equal(decode_image(buf.getvalue(), "x.tif"), np.rot90(pattern(), k=-1))


UNREADABLE_CHECK = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hmrcli.sources import expand_inputs, read_image, ImageReadError
    d = Path(sys.argv[1])
    for s in expand_inputs([str(d)]) + expand_inputs([str(d / "locked.png")]):
        try:
            print(s.name, "ok", read_image(s).shape)
        except ImageReadError as e:
            r = e.record()
            print(s.name, r["stage"], r["file"] == str(s.path), r["message"])
""")


def _unreadable_tree(base: Path) -> Path:
    d = base / "d"
    (d / "closed").mkdir(parents=True)
    (d / "a.png").write_bytes(encode(pattern()))
    (d / "locked.png").write_bytes(encode(pattern()))
    (d / "locked.png").chmod(0)
    (d / "closed").chmod(0)
    return d


def test_unreadable_file_and_folder(tmp_path):
    """chmod 000 file and folder: per-file errors. As root (which reads anything) the check
    runs in a child process as user nobody when setpriv is there."""
    import shutil
    import tempfile

    cmd = [sys.executable, "-c", UNREADABLE_CHECK]
    cleanup = None
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root (root can read a chmod 000 file) and no setpriv to drop privileges")
        cleanup = Path(tempfile.mkdtemp(prefix="hmrcli-unreadable-", dir="/tmp"))
        cleanup.chmod(0o755)
        base = cleanup
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
    else:
        base = tmp_path
    d = _unreadable_tree(base)
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        r = subprocess.run(cmd + [str(d)], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith("a.png ok (30, 40, 3)")
        assert lines[1].startswith("locked.png read True ") and "Permission denied" in lines[1]
        assert lines[2].startswith("closed read True ") and "cannot list the folder" in lines[2]
        assert lines[3].startswith("locked.png read True ") and "Permission denied" in lines[3]
    finally:
        (d / "locked.png").chmod(0o644)
        (d / "closed").chmod(0o755)
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)


def test_symlink_loops_end_and_give_errors(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.png").write_bytes(encode(pattern()))
    (d / "self.jpg").symlink_to("self.jpg")
    (d / "ping.png").symlink_to("pong.png")
    (d / "pong.png").symlink_to("ping.png")
    (d / "sub" / "up").symlink_to("..", target_is_directory=True)  # folder loop
    (d / "sub" / "b.png").write_bytes(encode(pattern()))
    srcs = expand_inputs([str(d)])
    names = [s.name for s in srcs]
    assert names == ["a.png", "ping.png", "pong.png", "self.jpg", "sub/b.png"]  # each folder walked once
    for s in srcs:
        if s.name in ("a.png", "sub/b.png"):
            assert read_image(s).shape == (30, 40, 3)
        else:
            with pytest.raises(ImageReadError, match="symbolic links") as ei:
                read_image(s)
            assert ei.value.record()["stage"] == "read"
    # given explicitly too
    (src,) = expand_inputs([str(d / "self.jpg")])
    with pytest.raises(ImageReadError):
        read_image(src)


def test_fifo_is_refused_not_waited_on(tmp_path):
    """A FIFO (given, or found in a folder) is an input that reading refuses at once, without
    opening it: opening a FIFO blocks until a writer comes."""
    d = tmp_path / "d"
    d.mkdir()
    os.mkfifo(d / "pipe.png")
    (d / "a.png").write_bytes(encode(pattern()))
    srcs = expand_inputs([str(d)])
    assert [s.name for s in srcs] == ["a.png", "pipe.png"]
    with pytest.raises(ImageReadError, match="not a regular file \\(a FIFO"):
        read_image(srcs[1])
    assert read_image(srcs[0]).shape[2] == 3


def test_error_names_the_file():
    e = ImageReadError("x.jpg", "broken")
    assert str(e) == "x.jpg: broken" and e.record() == {"file": "x.jpg", "stage": "read", "message": "x.jpg: broken"}


def test_sample_images_unchanged():
    """The decoder change keeps the shipped samples' pixels (as OpenCV's IMREAD_COLOR gives them)."""
    for p in sorted(SAMPLES.glob("*.*")):
        if p.suffix in (".png", ".jpg"):
            want = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            np.testing.assert_array_equal(read_image(p), want)
