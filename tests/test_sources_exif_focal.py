"""EXIF focal length -> pixels, and `hmrcli infer` using it for K."""

import json
from pathlib import Path

import numpy as np
import PIL.Image  # noqa: F401  (Pillow is a core dependency: no skip)
import pytest
from typer.testing import CliRunner

from hmrcli.cli import app
from hmrcli.sources import FULL_FRAME_DIAGONAL_MM, exif_focal_px

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"


def _jpeg(path: Path, w: int, h: int, **tags) -> Path:
    from PIL import Image

    im = Image.fromarray(np.full((h, w, 3), 128, np.uint8))
    exif = Image.Exif()
    sub = {}
    for tag, val in tags.items():
        sub[{"f35": 0xA405, "fmm": 0x920A, "xres": 0xA20E, "unit": 0xA210, "ew": 0xA002, "eh": 0xA003}[tag]] = val
    if sub:
        exif[0x8769] = sub
    im.save(path, exif=exif.tobytes())
    return path


def test_35mm_equivalent(tmp_path):
    p = _jpeg(tmp_path / "a.jpg", 400, 300, f35=50)
    f, why = exif_focal_px(p, 400, 300)
    assert f == pytest.approx(50 * 500 / FULL_FRAME_DIAGONAL_MM)
    assert "FocalLengthIn35mmFilm=50" in why


def test_focal_plane_resolution_scaled_to_the_decoded_size(tmp_path):
    from PIL.TiffImagePlugin import IFDRational

    # 4 mm lens, 250 px/mm sensor at 4000x3000, saved at 400x300: 4 * 250 / 10 = 100 px
    p = _jpeg(tmp_path / "b.jpg", 400, 300, fmm=IFDRational(4, 1), xres=IFDRational(250, 1), unit=4, ew=4000, eh=3000)
    f, why = exif_focal_px(p, 400, 300)
    assert f == pytest.approx(100.0)
    assert "FocalPlaneXResolution" in why


def test_no_exif(tmp_path):
    assert exif_focal_px(_jpeg(tmp_path / "c.jpg", 64, 48), 64, 48) is None
    assert exif_focal_px(SAMPLES / "astronaut.png", 512, 512) is None
    (tmp_path / "t.jpg").write_text("not an image")
    assert exif_focal_px(tmp_path / "t.jpg", 1, 1) is None


def test_infer_uses_exif_focal_unless_told_otherwise(tmp_path, constant_checkpoint):
    img = _jpeg(tmp_path / "photo.jpg", 320, 240, f35=28)
    runner = CliRunner()
    cams = {}
    for flag in ("--exif-focal", "--no-exif-focal"):
        out = tmp_path / flag
        r = runner.invoke(app, ["infer", str(img), "--checkpoint", str(constant_checkpoint), "--out", str(out),
                                "--detector", "whole-image", "--body-model", "free", "--json", flag])
        assert r.exit_code == 0, r.output
        cams[flag] = json.loads((out / "photo.jpg" / "person_00.camera.json").read_text())
    assert cams["--exif-focal"]["focal_px"] == pytest.approx(28 * 400 / FULL_FRAME_DIAGONAL_MM)
    assert cams["--exif-focal"]["K"][0][0] == pytest.approx(cams["--exif-focal"]["focal_px"])
    assert "EXIF" in cams["--exif-focal"]["focal_source"]
    assert cams["--no-exif-focal"]["focal_px"] == pytest.approx(400.0)
    assert cams["--no-exif-focal"]["focal_source"].startswith("default")


def test_implausible_exif_focal_is_ignored_and_recorded(tmp_path, constant_checkpoint):
    """FocalLengthIn35mmFilm=65535 (a filler, f = 1.2e6 px: the person 1 km away) is not used: the
    default focal, with the reason in the camera JSON."""
    p = _jpeg(tmp_path / "odd.jpg", 400, 300, f35=65535)
    f, why = exif_focal_px(p, 400, 300)
    assert f is None and "65535" in why and "implausible" in why
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["infer", str(p), "--out", str(out), "--detector", "whole-image",
                                 "--checkpoint", str(constant_checkpoint), "--json"])
    assert r.exit_code == 0, r.output
    cam = json.loads((out / "odd.jpg" / "person_00.camera.json").read_text())
    assert cam["focal_px"] == pytest.approx(500.0)
    assert cam["K_source"].startswith("default sqrt(W^2 + H^2); EXIF FocalLengthIn35mmFilm=65535 mm ignored")
