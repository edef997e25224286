"""Run options, the summary and the stop request of a batch run; the layout's constants."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hmrcli.engine.quality import FLAGS
from hmrcli.records import BatchSummary

CAMERA_SCHEMA = "hmrcli.camera/1"
RESULT_SCHEMA = "hmrcli.result/1"
MANIFEST_SCHEMA = "hmrcli.manifest/1"
MANIFEST_NAME = "manifest.jsonl"
ERRORS_NAME = "errors.jsonl"
#: exit status of a run stopped by a signal: 128 + the signal number
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
#: persons reconstructed per image when --max-persons is not given (a record with 10,000 boxes would
#: otherwise run for minutes); cutting is noted in the image's problems
DEFAULT_MAX_PERSONS = 100
#: errors kept in ``InferSummary.errors`` (all of them go to errors.jsonl)
MAX_SUMMARY_ERRORS = 1000

CAMERA_CONVENTION = (
    "OpenCV pinhole camera: x right, y down, z forward (metres); pixel = K (R X + t) / z with "
    "pixel (0,0) the centre of the top-left pixel. R, t map the body model's output (pose with "
    "global orientation, no translation) to the camera frame; R is the identity (the global "
    "orientation is already in the camera frame)."
)


#: images per step with the regression engine: its batch (persons across images) fills up to
#: ``batch_size`` persons, within these bounds (the prepared images wait in memory, on CUDA
#: pinned)
IMAGES_PER_STEP_BOUNDS = (8, 32)


def images_per_step_for(engine: Any) -> int:
    """Images per engine step for ``engine``: the regression engine's ``batch_size`` within
    :data:`IMAGES_PER_STEP_BOUNDS` (so that a batch of persons across images can fill up),
    else the default 8 (the fitting engine works person by person: small steps write results
    sooner)."""
    lo, hi = IMAGES_PER_STEP_BOUNDS
    if getattr(engine, "name", "") == "regress":
        return int(max(lo, min(hi, int(getattr(engine, "batch_size", lo)))))
    return lo


@dataclass
class InferOptions:
    out: Path
    mesh_formats: tuple[str, ...] = ("obj",)
    mesh_frame: str = "camera"  # "camera" | "model"
    focal: float | None = None  # pixels; None: EXIF (when exif_focal) else sqrt(W^2 + H^2)
    exif_focal: bool = True  # use the photo's EXIF focal length when --focal is not given
    principal_point: tuple[float, float] | None = None  # pixels (--principal-point); None: the image centre
    intrinsics: Any = None  # hmrcli.intrinsics.IntrinsicsTable (--intrinsics FILE): wins over the above
    overwrite: bool = False
    checkpoint: str = ""
    images_per_step: int = 8  # images per engine.run (also: per detector call)
    max_persons: int | None = None  # keep the N highest-scoring persons (None: at most DEFAULT_MAX_PERSONS, noted)
    overlay: bool = False  # also write OUT/NAME/overlay.png (meshes rendered over the photo)
    workers: int = 2  # image-decoding threads (0: decode in the loader thread)
    min_quality: float | None = None  # persons whose quality score is below this get no files (a "problems" entry)
    overlay_quality: bool = False  # overlay: colour each person by its quality score (red 0 -> green 1)
    settings: dict[str, Any] = field(default_factory=dict)  # more settings for the manifest (compared on re-runs)
    # hmrcli.pipeline.sequence.SequenceOptions: track persons through videos (and folders) after the
    # frames are written; None: every image on its own (not part of the per-image settings)
    sequence: Any = None


@dataclass
class InferSummary(BatchSummary):
    command: ClassVar[str] = "infer"
    interrupted: str | None = None  # "SIGINT", "SIGTERM", ... when the run was stopped
    redone: int = 0  # images that had results made with other settings (or none recorded), redone
    no_person: int = 0  # images done with no person found by the detector (recorded, exit status unchanged)
    persons_failed: int = 0  # persons found but not reconstructed (no landmarks, unusable box, ...)
    sequences: int = 0  # sequences tracked (or found up to date)
    tracks: int = 0  # tracks of those sequences
    sequences_failed: int = 0  # sequences that could not be tracked (errors.jsonl, stage "track")
    below_quality: int = 0  # persons reconstructed but withheld: quality score below --min-quality
    flags: dict[str, int] = field(default_factory=lambda: {f: 0 for f in FLAGS})  # persons per quality flag

    @property
    def remaining(self) -> int:
        """Images not handled because the run was stopped."""
        return max(0, self.images - self.done - self.skipped - self.failed)

    @property
    def exit_code(self) -> int:
        """0: every image succeeded or was already done; 1: some failed; 2: all failed;
        130 / 143: stopped by SIGINT / SIGTERM (128 + signal number)."""
        if self.interrupted:
            return SIGNAL_EXIT_CODES.get(self.interrupted, 130)
        code = super().exit_code
        return max(code, 1) if self.sequences_failed and code == 0 else code

    def _extra_json(self) -> dict[str, Any]:
        return {"remaining": self.remaining, "redone": self.redone, "no_person": self.no_person,
                "persons_failed": self.persons_failed, "below_quality": self.below_quality, "flags": dict(self.flags),
                "interrupted": self.interrupted,
                **({"sequences": self.sequences, "tracks": self.tracks, "sequences_failed": self.sequences_failed}
                   if self.sequences or self.sequences_failed else {})}


class StopRequest:
    """Ask a running :func:`run_inference` to stop after the batch in progress (thread- and
    signal-handler-safe). ``reason``: what asked, e.g. "SIGTERM" (gives the exit status)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def request(self, reason: str = "SIGINT") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()
