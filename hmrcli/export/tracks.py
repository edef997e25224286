"""Animation files of the tracks of sequence results (``hmrcli export`` of a video's results).

A sequence's results folder (``hmrcli infer`` with sequences: ``hmrcli.pipeline.sequence``)
holds ``sequence.json`` (schema :data:`SEQUENCE_SCHEMA`) and one ``track_XX.npz`` per tracked
person (:func:`hmrcli.export.animation.read_animation_npz`). For every track this writes,
under the output folder (the same relative place)::

    <sequence>/track_XX.glb    animated skinned GLB (keyframes at the video's frame rate, translation,
                               with the camera unless glb_camera is off)
    <sequence>/track_XX.bvh    BVH of the SMPL skeleton (rest offsets from the track's shape)
    <sequence>/track_XX.npz    the parameters (hmrcli.animation/1), when exporting to another folder

Existing files are kept unless ``overwrite``; a failing track is recorded (``errors.jsonl``,
stage ``export``) and the others go on. Nothing here prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmrcli.body import load_body_model
from hmrcli.export.animation import (
    animated_glb_bytes,
    animation_npz_bytes,
    bvh_text,
    read_animation_npz,
)
from hmrcli.export.writers import atomic_write_bytes, atomic_write_text
from hmrcli.files import append_json_line

__all__ = ["SEQUENCE_SCHEMA", "SEQUENCE_NAME", "TRACK_FORMATS", "SavedSequence", "TrackExportCounts",
           "find_sequence_results", "export_tracks"]

SEQUENCE_SCHEMA = "hmrcli.sequence/1"
SEQUENCE_NAME = "sequence.json"
#: what a track is exported as (``--format``): glb (animated), bvh, npz
TRACK_FORMATS = ("glb", "bvh", "npz")
_SUFFIX = {"glb": ".glb", "bvh": ".bvh", "npz": ".npz"}


@dataclass
class SavedSequence:
    """One sequence found in a results folder: its folder, name relative to the results
    folder (``"."`` for the results folder itself), record, and its frames' folder names."""

    folder: Path
    name: str
    record: dict[str, Any]

    @property
    def frame_folders(self) -> list[Path]:
        """The folders of the sequence's frames (``frames[].folder``, relative to the sequence's)."""
        return [self.folder / str(f["folder"]) for f in self.record.get("frames") or []
                if isinstance(f, dict) and f.get("folder")]

    @property
    def tracks(self) -> list[dict[str, Any]]:
        return [t for t in self.record.get("tracks") or [] if isinstance(t, dict) and t.get("file")]


@dataclass
class TrackExportCounts:
    """Per track: ``done`` (something written), ``skipped`` (all its outputs existed) or
    ``failed``; ``written`` files; the error records."""

    tracks: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    written: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)


def find_sequence_results(results_dir: str | os.PathLike) -> list[SavedSequence]:
    """Every ``sequence.json`` (schema hmrcli.sequence/*) below ``results_dir``, sorted by name."""
    root = Path(results_dir)
    found = []
    for p in sorted(root.rglob(SEQUENCE_NAME)):
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and str(rec.get("schema", "")).startswith(SEQUENCE_SCHEMA.split("/")[0] + "/"):
            found.append(SavedSequence(p.parent, p.parent.relative_to(root).as_posix() or ".", rec))
    return found


def export_tracks(sequences: list[SavedSequence], out: str | os.PathLike, formats: tuple[str, ...],
                  overwrite: bool = False, glb_camera: bool = True, smpl_dir: str | os.PathLike | None = None,
                  progress: Callable[[dict[str, Any]], None] | None = None) -> TrackExportCounts:
    """Write ``formats`` (of :data:`TRACK_FORMATS`) for every track of ``sequences`` under
    ``out`` (module docstring)."""
    fmts = [f for f in formats if f in TRACK_FORMATS]
    counts = TrackExportCounts()
    out = Path(out)
    bodies: dict[tuple[str, str], Any] = {}

    def fail(file: Path, message: str, fmt: str | None = None) -> None:
        rec = {"file": str(file), "stage": "export", "message": message, **({"format": fmt} if fmt else {})}
        append_json_line(out / "errors.jsonl", rec)
        counts.errors.append(rec)
        if progress:
            progress({"event": "error", **rec})

    for seq in sequences:
        od = out if seq.name == "." else out / seq.name
        gender = str(seq.record.get("gender") or "neutral")
        n_done = 0
        for t in seq.tracks:
            counts.tracks += 1
            src = seq.folder / str(t["file"])
            stem = Path(str(t["file"])).stem
            targets = {f: od / f"{stem}{_SUFFIX[f]}" for f in fmts}
            pending = [f for f, p in targets.items() if (overwrite or not p.exists())
                       and not (f == "npz" and p.exists() and os.path.samefile(p, src))]
            if not pending:
                counts.skipped += 1
                continue
            try:
                anim = read_animation_npz(src)
                key = (anim.body_model, gender)
                if key not in bodies:
                    try:
                        bodies[key] = load_body_model(anim.body_model, gender=gender, smpl_dir=smpl_dir)
                    except Exception as e:  # missing SMPL files: these tracks fail, the others go on
                        bodies[key] = f"{src}: body model {anim.body_model!r} ({gender}): {e}"
                body = bodies[key]
                if isinstance(body, str):
                    raise ValueError(body)
            except Exception as e:
                fail(src, str(e) if str(src) in str(e) else f"{src}: {e}")
                counts.failed += 1
                continue
            ok, wrote = True, 0
            for f in pending:
                try:
                    if f == "glb":
                        atomic_write_bytes(targets[f], animated_glb_bytes(body, anim, with_camera=glb_camera))
                    elif f == "bvh":
                        atomic_write_text(targets[f], bvh_text(body, anim))
                    else:
                        atomic_write_bytes(targets[f], animation_npz_bytes(anim))
                    wrote += 1
                except Exception as e:
                    ok = False
                    fail(src, f"{targets[f]}: {type(e).__name__}: {e}", f)
            counts.written += wrote
            if not ok:
                counts.failed += 1
            else:
                counts.done += 1
                n_done += 1
        if progress:
            progress({"event": "done", "file": seq.name, "tracks": len(seq.tracks), "out": str(od), "written_tracks": n_done})
    return counts
