"""Input images: files, folders (recursive, sorted), globs -> decoded RGB images.

Images are recognised by content (OpenCV decodes them), not by extension; EXIF
orientation is applied by the decoder; grey and alpha images become RGB.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ImageSource", "ImageReadError", "expand_inputs", "read_image", "IMAGE_SUFFIXES", "MAX_PIXELS"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pnm"}
MAX_PIXELS = 100_000_000  # refuse larger images instead of running out of memory


class ImageReadError(ValueError):
    """An input file is not a readable image; the message names the file."""


@dataclass(frozen=True)
class ImageSource:
    """One input image: its path and the name its outputs are filed under."""

    path: Path
    name: str  # relative output name (safe: no '..', no absolute path)


def expand_inputs(inputs: list[str]) -> list[ImageSource]:
    """Files as given; folders walked recursively (sorted, image suffixes); globs expanded.
    Output names keep the folder structure below each given folder."""
    from hmrcli.export.writers import safe_relative_name

    out: list[ImageSource] = []
    seen: set[str] = set()

    def add(path: Path, name: str) -> None:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            out.append(ImageSource(path, safe_relative_name(name)))

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for root, dirs, files in os.walk(p, followlinks=False):
                dirs.sort()
                for f in sorted(files):
                    fp = Path(root) / f
                    if fp.suffix.lower() in IMAGE_SUFFIXES:
                        add(fp, str(fp.relative_to(p)))
        elif any(c in item for c in "*?[") and not p.exists():
            for m in sorted(glob.glob(item, recursive=True)):
                if Path(m).is_file():
                    add(Path(m), Path(m).name)
        else:
            add(p, p.name)  # missing files are reported when read
    return out


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3). Raises :class:`ImageReadError`."""
    import cv2

    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read file ({e.strerror or e})") from e
    if data.size == 0:
        raise ImageReadError(f"{path}: empty file")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise ImageReadError(f"{path}: not a readable image (unknown format or corrupt data)")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise ImageReadError(f"{path}: image too large ({img.shape[1]}x{img.shape[0]} > {MAX_PIXELS} pixels)")
    # re-decode with orientation applied, as 8-bit colour
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageReadError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
