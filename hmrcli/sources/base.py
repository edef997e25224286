"""What an input is: ``ImageSource``, ``ImageReadError``, the suffixes and limits."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
